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


def test_int8_engine_follows_the_cpu_and_the_environment(monkeypatch):
    """OpenVINO runs auto's int8 graphs only where it was measured faster (AMX, AVX-512 VNNI)
    and is installed; COVIDCT_INT8_ENGINE overrides, and a wrong value is refused by name."""
    import importlib.util

    from covidct.devices import INT8_ENGINE_ENV, int8_engine
    from covidct.errors import ModelError

    monkeypatch.delenv(INT8_ENGINE_ENV, raising=False)
    installed = importlib.util.find_spec("openvino") is not None
    amx = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f amx_tile amx_int8\n"
    vnni = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n"
    avx2 = "processor\t: 0\nflags\t\t: fpu sse avx2 fma\n"
    assert int8_engine(amx) == int8_engine(vnni) == ("openvino" if installed else "onnxruntime")
    assert int8_engine(avx2) == "onnxruntime"
    for told in ("openvino", "onnxruntime"):
        monkeypatch.setenv(INT8_ENGINE_ENV, told.upper())
        assert int8_engine(avx2) == int8_engine(amx) == told
    monkeypatch.setenv(INT8_ENGINE_ENV, "tensorrt")
    with pytest.raises(ModelError, match=INT8_ENGINE_ENV):
        int8_engine(amx)


def test_auto_trusts_an_int8_engine_only_with_its_own_check():
    from types import SimpleNamespace

    from covidct.export import passed_check

    bit = SimpleNamespace(int8_role="classifier")
    record = {"passed": True, "openvino": {"passed": False}}
    assert passed_check(bit, record) and not passed_check(bit, record, "openvino")
    assert not passed_check(bit, {"passed": True}, "openvino")  # checked before OpenVINO was there
    assert passed_check(bit, {"passed": False, "openvino": {"passed": True}}, "openvino")
    denoiser = SimpleNamespace(int8_role="denoiser")
    old_rule = {"passed": True, "openvino": {"passed": True}}  # no rule_version: calls-only rule
    assert not passed_check(denoiser, old_rule, "openvino")
