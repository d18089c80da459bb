"""The shared helpers: device choice, CPU weight snapshots, file digests, labels.csv."""
import hashlib

import pytest

from covidct.devices import choose_device, cpu_state
from covidct.digest import file_digest, sha256_file
from covidct.errors import DatasetError, ModelError
from covidct.labels import labels_path, read_labels


def test_choose_device_auto_cpu_and_refusals():
    torch = pytest.importorskip("torch")
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ModelError, match="unknown device"):
        choose_device("teapot")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA GPU"):
            choose_device("cuda")


def test_cpu_state_is_a_copy_that_later_steps_leave_alone():
    torch = pytest.importorskip("torch")
    net = torch.nn.Linear(2, 1)
    state = cpu_state(net)
    with torch.no_grad():
        net.weight.add_(1.0)
    assert not torch.equal(state["weight"], net.weight)


def test_sha256_file_is_plain_sha256_and_file_digest_covers_names(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"abc")
    assert sha256_file(tmp_path / "a.bin") == hashlib.sha256(b"abc").hexdigest()
    before = file_digest(tmp_path)
    (tmp_path / "a.bin").rename(tmp_path / "b.bin")
    assert file_digest(tmp_path) != before


def test_read_labels_rows_and_a_clear_error(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes("\ufeffpatient_id,label\np1,NCP\n".encode("utf-8"))
    assert labels_path(tmp_path) == path and labels_path(path) == path
    assert read_labels(path) == [{"patient_id": "p1", "label": "NCP"}]
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DatasetError, match="cannot read the labels CSV"):
        read_labels(path)
