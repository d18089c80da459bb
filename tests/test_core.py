"""Model files, atomic outputs and the Prediction record."""
import json

import numpy as np
import pytest

from covidct.atomic import atomic_dir, atomic_path, write_json
from covidct.errors import ModelError
from covidct.models import load_model, read_model_file, save_model_file
from covidct.prediction import Prediction


def test_model_file_round_trip_and_header(tmp_path):
    import torch

    path = save_model_file(tmp_path / "m.pt", "bit", {"state_dict": {"w": torch.ones(2)}, "note": "x"})
    record = read_model_file(path)
    assert record["method"] == "bit" and record["format"] == "covidct-model"
    assert torch.equal(record["state_dict"]["w"], torch.ones(2))
    assert len(record["file"]["sha256"]) == 16


@pytest.mark.parametrize("content, problem", [
    (b"not a model at all", "not a readable covidct model file"),
    (None, "not a covidct model file"),
])
def test_bad_model_files_are_clear_errors(tmp_path, content, problem):
    import torch

    path = tmp_path / "bad.pt"
    if content is None:
        torch.save({"something": 1}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(ModelError, match=problem) as err:
        load_model(path)
    assert str(path) in str(err.value)
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "missing.pt")


def test_model_file_cannot_run_code_on_load(tmp_path):
    import torch

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "covidct-model", "method": "bit", "x": Evil()}, path)
    with pytest.raises(ModelError):
        read_model_file(path)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_whole_folder(tmp_path):
    out = tmp_path / "run"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "b.txt").write_text("2")
            raise RuntimeError
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_prediction_json_carries_disclaimer_and_synthetic_flag(tmp_path):
    pred = Prediction("bit", ("Normal", "CP", "NCP"), [0.1, 0.2, 0.7],
                      slice_probabilities=np.array([[0.2, 0.2, 0.6], [0, 0.2, 0.8]]),
                      slice_indices=np.array([3, 4]), scan={"synthetic": True})
    paths = pred.save(tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["label"] == "NCP" and "not a diagnosis" in data["disclaimer"]
    assert "SYNTHETIC" in data["synthetic_notice"] and data["slices"][1]["index"] == 4
    assert paths["csv"].read_text().splitlines()[0] == "slice_index,Normal,CP,NCP"
    assert "[SYNTHETIC]" in pred.summary_line()
    write_json(tmp_path / "n.json", {"a": np.float32(1.5), "b": np.arange(2)})
    assert json.loads((tmp_path / "n.json").read_text()) == {"a": 1.5, "b": [0, 1]}
