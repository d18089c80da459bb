"""No patient identifier anywhere: a SYNTHETIC DICOM series whose tags, folder and file names
carry a fake name, ID, accession number, dates and UIDs goes through info, predict (both
methods, with pictures), evaluate, predict-batch and report; every byte written and printed
is searched for each value and its DICOM-formatted variants."""
from __future__ import annotations

import gzip
import io
import os
import re
import stat
import zipfile
from pathlib import Path

import pytest

from conftest import build_hu_volume, save_tiny_bit_model, save_tiny_covidctnet_model

NAME, ID, ACCESSION = "DOE^JANE", "MRN778899", "ACC445566"
STUDY_DATE, BIRTH_DATE = "20240131", "19800215"
UID_ROOT = "1.2.826.0.1.3680043.8.498.4242"
SERIES_UID, STUDY_UID = f"{UID_ROOT}.1.778899", f"{UID_ROOT}.2.778899"
#: What must never appear, in the spellings exports and programs use.
SECRETS = ["DOE", "JANE", ID, "778899", ACCESSION, "445566", STUDY_DATE, "2024-01-31",
           "31.01.2024", "2024/01/31", BIRTH_DATE, "1980-02-15", UID_ROOT, "4242.1", "4242.2"]


def _phi_series(folder: Path, seed: int = 0) -> Path:
    """A 16-slice SYNTHETIC series in ``folder``, named as a hospital export would name it."""
    from covidct.scanio import write_dicom_series

    files = write_dicom_series(
        build_hu_volume((16, 64, 64), (2.5, 0.7, 0.7), seed=seed), folder,
        patient_name=NAME, patient_id=ID, series_uid=f"{SERIES_UID}{seed}",
        study_uid=f"{STUDY_UID}{seed}",
        extra={"AccessionNumber": ACCESSION, "StudyDate": STUDY_DATE, "SeriesDate": STUDY_DATE,
               "AcquisitionDate": STUDY_DATE, "ContentDate": STUDY_DATE,
               "PatientBirthDate": BIRTH_DATE, "InstitutionName": "JANE DOE MEMORIAL",
               "ReferringPhysicianName": "DOE^JOHN", "StudyID": ACCESSION})
    for k, f in enumerate(files):
        f.rename(folder / f"{STUDY_DATE}-{k:03d}_IM{k:04d}_DOE_JANE.dcm")
    return folder


_BASE64 = re.compile(r"data:[\w/+.-]+;base64,([A-Za-z0-9+/=]+)")


def _texts(root: Path):
    """(file, text, binary) for every file under root. Text is searched whole; in binary
    files (and base64 pictures in HTML) random bytes may spell a 3-letter secret, so they
    are opened (zip members, gzip, PNG text chunks) and searched case-sensitively."""
    import base64

    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            yield path, path.name, _binary_text(data)
            continue
        inner = [_binary_text(base64.b64decode(m)) for m in _BASE64.findall(text)]
        yield path, path.name + "\n" + _BASE64.sub("data:", text), "\n".join(inner)


def _binary_text(data: bytes) -> str:
    from PIL import Image

    chunks = [data]
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            chunks += [zf.read(n) for n in zf.namelist()] + [n.encode() for n in zf.namelist()]
    if data[:2] == b"\x1f\x8b":
        chunks.append(gzip.decompress(data))
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        with Image.open(io.BytesIO(data)) as image:
            chunks += [str(v).encode() for v in image.info.values()]
    return b"\n".join(chunks).decode("latin-1")


def _leaks(text: str, binary: str = "") -> list[str]:
    found = [s for s in SECRETS if re.search(re.escape(s), text, re.IGNORECASE)]
    return found + [s for s in SECRETS if s in binary and s.upper() == s and s not in found]


def _leaks_under(root: Path, base: Path) -> list:
    return [(str(p.relative_to(base)), _leaks(t, b)) for p, t, b in _texts(root)
            if _leaks(t, b)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return (save_tiny_bit_model(folder / "bit.pt", seed=1, resize=40, crop=32),
            save_tiny_covidctnet_model(folder / "covidctnet.pt"))


@pytest.mark.slow
def test_no_identifier_in_anything_written_or_printed(tmp_path, models, run_cli):
    bit, covidctnet = models
    data = tmp_path / "in"
    series = _phi_series(data / "Covid" / "DOE_JANE_MRN778899")
    for k, label in ((1, "Control"), (2, "CAP")):
        _phi_series(data / label / f"DOE_JANE_{k}_MRN778899", seed=k)
    batch_in = data / "Covid"
    out = tmp_path / "out"
    home = tmp_path / "home"
    env = {"HOME": str(home), "COVIDCT_CACHE": "", "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    runs = [
        ("info", series),
        ("info", series, "--json"),
        ("predict", series, "--method", "all", "--model", bit, "--model", covidctnet,
         "--out", out / "predict"),
        ("evaluate", data, "--model", covidctnet, "--split", "all", "--n-boot", "20",
         "--out", out / "evaluate"),
        ("predict-batch", batch_in, "--model", bit, "--model", covidctnet, "--workers", "0",
         "--pictures", "--out", out / "batch"),
        ("report", out, "--out", out / "report.html"),
    ]
    printed = []
    for args in runs:
        rc, stdout, stderr = run_cli(*args, extra_env=env, timeout=300)
        assert rc == 0, (args[0], stderr)
        printed.append((args[0], stdout + stderr))
    assert (out / "predict" / "covidctnet-infection-mip.png").is_file()  # pictures were made
    assert (out / "batch" / "manifest.csv").is_file() and (out / "report.html").is_file()
    leaks = [(cmd, _leaks(text)) for cmd, text in printed if _leaks(text)]
    leaks += [leak for root in (out, home, tmp_path / "tmp") for leak in _leaks_under(root, tmp_path)]
    assert leaks == []
    # No patient-derived data cached outside --out (the default runtime keeps the models' own
    # ONNX graphs, named by the model file's digest, under the cache's onnx/ folder, and what
    # OpenVINO compiled of them, named by its hash, under openvino/), and no unpacked copy left
    # in the temporary folder.
    cache = home / ".cache" / "covidct"
    cached = [p.relative_to(cache) for p in cache.rglob("*") if p.is_file()] if cache.exists() else []
    assert all((p.parts[0] == "onnx" and p.name.startswith(("bit-", "covidctnet-")))
               or (p.parts[0] == "openvino" and p.name.removesuffix(".blob").isdigit())
               for p in cached), cached
    assert list((tmp_path / "tmp").glob("covidct*")) == []
    # Derived patient data are private: files 0600, new folders 0700.
    for path in (out / "predict").rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    assert stat.S_IMODE((out / "predict").stat().st_mode) == 0o700


def test_paths_are_shown_when_asked(tmp_path, run_cli):
    series = _phi_series(tmp_path / "DOE_JANE_MRN778899")
    rc, stdout, _ = run_cli("--show-paths", "info", series)
    assert rc == 0 and f"source:        {series}" in stdout
    rc, stdout, _ = run_cli("info", series)
    assert "DOE" not in stdout and "source:        (path hidden" in stdout


def test_library_warnings_are_summarised_once_without_uids(tmp_path, run_cli):
    """pydicom complains once per file about an invalid UID; covidct says it once, no UID."""
    import pydicom

    series = _phi_series(tmp_path / "s")
    bad_uid = "09bc8aea-7f1e-4e0b-a7a0-5d1c9e6a0b11"
    for f in series.iterdir():
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = bad_uid
        ds.save_as(f)
    rc, stdout, stderr = run_cli("info", series)
    assert rc == 0, stderr
    text = stdout + stderr
    assert "09bc8aea" not in text and "the DICOM reader reported" in text
    assert text.count("the DICOM reader reported") <= 2  # the log line and info's warning row


def test_cache_clear_removes_only_covidct_entries(tmp_path, run_cli):
    import numpy as np

    from covidct.covidctnet.cache import ArrayCache

    cache = ArrayCache(tmp_path / "cache")
    cache.save(ArrayCache.key("volume", "x", {}), np.zeros(3))
    entry = next((tmp_path / "cache").rglob("*.npz"))
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert stat.S_IMODE(entry.parent.stat().st_mode) == 0o700
    (tmp_path / "cache" / "mine.txt").write_text("not ours")
    rc, stdout, _ = run_cli("cache", "clear", "--dir", tmp_path / "cache")
    assert rc == 0 and "removed 1 cache entries" in stdout
    assert not entry.exists() and (tmp_path / "cache" / "mine.txt").exists()


def test_loaded_covidctnet_has_no_persistent_cache_unless_asked(models, monkeypatch):
    from covidct.models import load_model

    monkeypatch.delenv("COVIDCT_CACHE", raising=False)
    assert not load_model(models[1]).cache.enabled
    monkeypatch.setenv("COVIDCT_CACHE", os.fspath(Path("/tmp/somewhere")))
    assert load_model(models[1]).cache.enabled


def test_evaluate_outputs_are_private(tmp_path, models, run_cli):
    """Per-patient scores are derived patient data: 0700 folder, 0600 files."""
    data = tmp_path / "in"
    for k, label in enumerate(("Covid", "Control", "CAP")):
        _phi_series(data / label / f"p{k}", seed=k)
    out = tmp_path / "eval"
    rc, _, err = run_cli("evaluate", data, "--model", models[1], "--split", "all",
                         "--n-boot", "10", "--out", out, timeout=300)
    assert rc == 0, err
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for path in out.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
