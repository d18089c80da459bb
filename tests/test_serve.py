"""`covidct serve`: the HTTP API on synthetic DICOM, NIfTI and PNG uploads, every refused
input, persistence across a restart, the token, PHI, and 20 concurrent uploads."""
from __future__ import annotations

import io
import logging
import shutil
import sqlite3
import zipfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

from _serve_fixtures import (dicom_zip, make_app, nifti_file, png_files, post, serve_models,  # noqa: F401
                             serve_models_dir, wait, zip_bytes)
from covidct.constants import DISCLAIMER, SYNTHETIC_NOTICE

pytestmark = pytest.mark.xdist_group("serve")


@pytest.fixture
def client(tmp_path, serve_models):
    with TestClient(make_app(tmp_path / "data", serve_models)) as c:
        yield c


def _direct(models, path):
    """Each model's own predict on the file, in a worker thread as the server runs it (the main
    thread's 2-thread OpenMP team is 10-20x slower on a busy 2-core machine)."""
    from covidct.scanio import load_scan

    def run():
        scan = load_scan(path)
        return {m.method: m.predict(scan) for m in models}

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(run).result()


def _assert_matches(result, direct):
    assert set(result["methods"]) == set(direct)
    for method, prediction in direct.items():
        got = result["methods"][method]["probabilities"]
        np.testing.assert_allclose(list(got.values()), prediction.probabilities, atol=1e-6)
        assert result["methods"][method]["label"] == prediction.label


def _png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.size


# -- the service ------------------------------------------------------------------------

def test_health_docs_and_page(client):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["models"] == ["bit", "covidctnet"]
    docs = client.get("/docs").text  # drawn on the server: readable without internet access
    assert "/api/scans/{job_id}/slices/{k}.png" in docs and "overlay" in docs and "<script" not in docs
    assert client.get("/docs/swagger").status_code == 404  # its scripts come from a CDN: not served
    assert "/api/scans" in client.get("/openapi.json").json()["paths"]
    page = client.get("/").text
    assert DISCLAIMER in page and "<script src" not in page and "<link" not in page
    assert "cdn" not in page.lower() and "https://" not in page


def test_dicom_zip_upload_gives_the_models_result_and_slice_pictures(client, serve_models, tmp_path):
    path = dicom_zip(tmp_path / "scan.zip", seed=1)
    answer = post(client, path)
    assert answer.status_code == 202 and answer.json()["status"] == "queued"
    job = wait(client, answer.json()["id"])
    assert job["status"] == "done", job["error"]
    result = job["result"]
    _assert_matches(result, _direct(serve_models, path))
    assert result["disclaimer"] == DISCLAIMER and result["synthetic"] is True
    assert result["synthetic_notice"] == SYNTHETIC_NOTICE
    assert result["scan"]["upload_kind"] == "dicom-zip" and result["scan"]["shape"] == [12, 64, 64]
    assert result["call"]["label"] and 0 <= result["call"]["covid19_probability"] <= 1
    assert len(result["slice_scores"]["bit"]) == len(result["slice_scores"]["covidctnet"]) == 12
    assert {"read_scan", "bit", "covidctnet"} <= set(result["timings_s"])
    assert result["models"]["bit"]["arch"] == "resnetv2_tiny_bit"
    # The page draws each method from the model's own description, not from its name.
    assert result["display"]["bit"]["overlay"] == "gradcam"
    assert result["display"]["covidctnet"]["overlay"] == "infection"
    assert {v["strip_scale"] for v in result["display"].values()} == {"probability", "relative"}
    base = f"/api/scans/{job['id']}/slices/6.png"
    pictures = {o: client.get(base, params={"overlay": o}) for o in ("none", "gradcam", "infection")}
    for overlay, answer in pictures.items():
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/png", overlay
        assert _png_size(answer.content) == (64, 64)
    assert len({a.content for a in pictures.values()}) == 3  # each overlay draws something
    mediastinum = client.get(base, params={"window": "mediastinum"}).content
    assert mediastinum != pictures["none"].content
    report = client.get(f"/api/scans/{job['id']}/report.html")
    assert report.status_code == 200 and DISCLAIMER in report.text and "data:image/png" in report.text
    download = client.get(f"/api/scans/{job['id']}/result.json")
    assert download.json() == result and "attachment" in download.headers["content-disposition"]


def test_nifti_upload(client, serve_models, tmp_path):
    path = nifti_file(tmp_path / "scan.nii.gz", seed=2)
    job = wait(client, post(client, path).json()["id"])
    assert job["status"] == "done", job["error"]
    _assert_matches(job["result"], _direct(serve_models, path))
    assert job["result"]["scan"]["units"] == "HU"


def test_png_slices_upload_in_natural_order(client, serve_models, tmp_path):
    files = png_files(tmp_path / "png", seed=3)
    # Uploaded shuffled and with names whose natural order (2 < 10) is the slice order.
    names = [f"img{k + 1}.png" for k in range(len(files))]
    order = np.random.default_rng(0).permutation(len(files))
    answer = post(client, *[files[i] for i in order], names=[names[i] for i in order])
    job = wait(client, answer.json()["id"])
    assert job["status"] == "done", job["error"]
    _assert_matches(job["result"], _direct(serve_models, tmp_path / "png"))
    assert job["result"]["scan"]["units"] == "windowed"
    answer = client.get(f"/api/scans/{job['id']}/slices/0.png", params={"overlay": "gradcam"})
    assert answer.status_code == 200


def test_single_slice_runs_the_slice_classifier_and_says_why_covidctnet_did_not(client, tmp_path):
    one = png_files(tmp_path / "png", seed=4)[5]
    job = wait(client, post(client, one).json()["id"])
    assert job["status"] == "done"
    assert set(job["result"]["methods"]) == {"bit"}
    assert "at least 2 slices" in job["result"]["errors"]["covidctnet"]
    answer = client.get(f"/api/scans/{job['id']}/slices/0.png", params={"overlay": "infection"})
    assert answer.status_code == 404 and "infection map" in answer.json()["detail"]


def test_results_survive_a_restart_and_unfinished_jobs_are_marked(tmp_path, serve_models):
    data = tmp_path / "data"
    with TestClient(make_app(data, serve_models)) as first:
        job = wait(first, post(first, nifti_file(tmp_path / "s.nii.gz")).json()["id"])
    # A job that was still running when the process died:
    db = sqlite3.connect(data / "jobs.sqlite3")
    db.execute("INSERT INTO jobs (id, status, created) VALUES ('deadbeef', 'running', 0)")
    db.commit()
    db.close()
    (data / "work" / "job-stale").mkdir()
    with TestClient(make_app(data, serve_models)) as second:
        again = second.get(f"/api/scans/{job['id']}").json()
        assert again["status"] == "done" and again["result"] == job["result"]
        assert second.get(f"/api/scans/{job['id']}/slices/3.png?overlay=gradcam").status_code == 200
        stale = second.get("/api/scans/deadbeef").json()
        assert stale["status"] == "failed" and "restart" in stale["error"]
        assert not any((data / "work").iterdir())
        assert second.delete(f"/api/scans/{job['id']}").json()["deleted"]
        assert second.get(f"/api/scans/{job['id']}").status_code == 404
        assert not (data / "results" / job["id"]).exists()


def test_jobs_stored_by_earlier_versions_in_one_viewer_npz_still_show(tmp_path, serve_models):
    import json

    data = tmp_path / "data"
    with TestClient(make_app(data, serve_models)) as first:
        job = wait(first, post(first, nifti_file(tmp_path / "s.nii.gz")).json()["id"])
        url = f"/api/scans/{job['id']}/slices/4.png?overlay=infection"
        before = first.get(url).content
    folder = data / "results" / job["id"]
    note = json.loads((folder / "viewer" / "viewer.json").read_text())
    # Those versions kept CovidCTNet's map on its own (D, S, S) grid with the volume's depth.
    net = _direct(serve_models, tmp_path / "s.nii.gz")["covidctnet"]
    old = {"voxels": np.load(folder / "viewer" / "voxels.npy"),
           "infection": np.asarray(net.maps["infection"], dtype=np.float16),
           "units": np.array(note["units"]), "direction": np.array(note["direction"]),
           "volume_depth": np.array(net.scan["preprocessed_shape"][0])}
    np.savez_compressed(folder / "viewer.npz", **old)
    shutil.rmtree(folder / "viewer")
    shutil.rmtree(folder / "render")
    with TestClient(make_app(data, serve_models)) as second:
        assert second.get(url).content == before
        # Results stored before the page drew from the models' descriptions get them served.
        store = second.app.state.store
        stored = store.get(job["id"])["result"]
        stored.pop("display")
        store.update(job["id"], result=stored)
        shown = second.get(f"/api/scans/{job['id']}").json()["result"]["display"]
        assert shown["covidctnet"]["overlay"] == "infection" and "strip_label" in shown["bit"]
    # ... and so do those that kept it so in viewer/*.npy with a viewer.json note.
    (folder / "viewer").mkdir()
    for name in ("voxels", "infection"):
        np.save(folder / "viewer" / f"{name}.npy", old[name])
    (folder / "viewer" / "viewer.json").write_text(json.dumps(
        {"units": note["units"], "direction": note["direction"], "volume_depth": int(old["volume_depth"])}))
    (folder / "viewer.npz").unlink()
    shutil.rmtree(folder / "render")
    with TestClient(make_app(data, serve_models)) as third:
        assert third.get(url).content == before


def test_uploads_are_removed_when_the_job_ends(client, tmp_path):
    app_config = client.app.state.config
    wait(client, post(client, dicom_zip(tmp_path / "a.zip")).json()["id"])
    bad = zip_bytes({"series/a.dcm": b"\0" * 128 + b"DICM" + b"\x02" * 40})
    wait(client, client.post("/api/scans", files=[("files", ("b.zip", bad))]).json()["id"])
    assert list(app_config.work_dir.iterdir()) == []


# -- refused and failing inputs -----------------------------------------------------------

def _refused(answer, status: int, words: str) -> None:
    assert answer.status_code == status, answer.text
    assert words in answer.json()["detail"], answer.json()


def test_size_limit_answers_413(tmp_path, serve_models):
    with TestClient(make_app(tmp_path / "d", serve_models, max_upload_bytes=100_000)) as c:
        # Over the limit but under the framing slack: refused while it is copied.
        _refused(c.post("/api/scans", files=[("files", ("a.nii.gz", b"\x1f\x8b" + b"0" * 300_000))]),
                 413, "the 100,000 bytes limit")
        # Far over: refused from its Content-Length before it is read.
        _refused(c.post("/api/scans", files=[("files", ("a.zip", b"0" * 3_000_000))]), 413, "the 100,000 bytes limit")
        # Sent chunked, without a Content-Length: cut off once the body passes the limit.
        def body():
            yield b"--xyz\r\nContent-Disposition: form-data; name=files; filename=a.zip\r\n\r\n"
            for _ in range(40):
                yield b"0" * 100_000
            yield b"\r\n--xyz--\r\n"

        answer = c.post("/api/scans", content=body(),
                        headers={"content-type": "multipart/form-data; boundary=xyz"})
        _refused(answer, 413, "the 100,000 bytes limit")
        assert list(c.app.state.config.work_dir.iterdir()) == []


def test_slice_limit_answers_422(tmp_path, serve_models):
    with TestClient(make_app(tmp_path / "d", serve_models, max_slices=8)) as c:
        _refused(post(c, *png_files(tmp_path / "png")), 422, "more than the 8 slices accepted")
        _refused(post(c, dicom_zip(tmp_path / "s.zip")), 422, "12 files, more than the 8")
        _refused(post(c, nifti_file(tmp_path / "s.nii.gz")), 422, "12 axial slices, more than the 8")


def test_bit_over_the_pixel_limit_are_refused_from_their_headers(tmp_path, serve_models):
    limit = dict(max_slice_pixels=48 * 48)  # the test scans have 64x64 slices
    with TestClient(make_app(tmp_path / "d", serve_models, **limit)) as c:
        too_big = "64x64 pixels, more than the 2,304 pixels a slice may have"
        _refused(post(c, *png_files(tmp_path / "png")[:2]), 413, too_big)
        _refused(post(c, nifti_file(tmp_path / "s.nii.gz")), 413, too_big)
        dicom = dicom_zip(tmp_path / "s.zip")
        with zipfile.ZipFile(dicom) as zf:
            (tmp_path / "one.dcm").write_bytes(zf.read(zf.namelist()[0]))
        _refused(post(c, tmp_path / "one.dcm"), 413, too_big)
        # Inside a zip the sizes are read when the job unpacks it, before any reader decodes.
        job = wait(c, post(c, dicom).json()["id"])
        assert job["status"] == "failed"
        assert job["error"] == f"zip entry 1 (in name order) is {too_big}"
        assert list(c.app.state.config.work_dir.iterdir()) == []


@pytest.mark.parametrize("name, data, words", [
    ("escape.zip", zip_bytes({"../../etc/evil.dcm": b"x"}), "outside the folder"),
    ("abs.zip", zip_bytes({"/tmp/evil.dcm": b"x"}), "outside the folder"),
    ("bomb.zip", zip_bytes({"a.dcm": bytes(80 * 1024 * 1024)}), "zip bomb"),
    ("notazip.zip", b"PK\x03\x04 this is not really a zip", "not a readable zip"),
    ("empty.zip", zip_bytes({}), "no files"),
    ("notes.txt", b"patient notes", "file type '.txt' is not accepted"),
    ("slice.png", b"GIF89a not a png", "is not a PNG picture"),
    ("slice.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 20, "corrupt or truncated"),
    ("scan.nii.gz", b"\x1f\x8b garbage", "not a readable NIfTI"),
    ("scan.nii", b"\0" * 400, "not a readable NIfTI"),
    ("empty.png", b"", "empty"),
])
def test_bad_uploads_are_refused_at_once(client, name, data, words):
    _refused(client.post("/api/scans", files=[("files", (name, data))]), 422, words)
    assert list(client.app.state.config.work_dir.iterdir()) == []


def test_mixed_or_missing_uploads_are_refused(client, tmp_path):
    png = png_files(tmp_path / "png")[0]
    _refused(post(client, png, nifti_file(tmp_path / "s.nii.gz")), 422, "mixed upload")
    _refused(post(client, dicom_zip(tmp_path / "a.zip"), dicom_zip(tmp_path / "b.zip", seed=1)),
             422, "a dicom-zip scan is one file")
    assert client.post("/api/scans").status_code == 422


def test_corrupt_dicom_and_unreadable_zip_contents_fail_the_job_with_a_reason(client, tmp_path):
    path = dicom_zip(tmp_path / "scan.zip")
    with zipfile.ZipFile(path) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    first = sorted(entries)[3]
    entries[first] = entries[first][:400]  # truncated in the middle of the header/pixels
    job = wait(client, client.post("/api/scans", files=[("files", ("c.zip", zip_bytes(entries)))]).json()["id"])
    assert job["status"] == "failed" and job["result"] is None
    # Members are named by position, never by name (names may carry a patient's name).
    assert "file 4 of 12 in name order: DICOM file has no pixel data" in job["error"]
    assert "series" not in job["error"] and str(client.app.state.config.work_dir) not in job["error"]
    text_only = zip_bytes({"readme.txt": b"hello", "data.csv": b"1,2"})
    job = wait(client, client.post("/api/scans", files=[("files", ("t.zip", text_only))]).json()["id"])
    assert job["status"] == "failed" and "none of the 2 files" in job["error"]


def test_unknown_jobs_slices_and_options(client, tmp_path):
    assert client.get("/api/scans/0123abcd").status_code == 404
    assert client.get("/api/scans/..%2F..%2Fetc").status_code == 404
    job = wait(client, post(client, nifti_file(tmp_path / "s.nii.gz")).json()["id"])
    base = f"/api/scans/{job['id']}/slices"
    _refused(client.get(f"{base}/12.png"), 404, "slices 0-11")
    _refused(client.get(f"{base}/0.png?overlay=xray"), 422, "unknown overlay")
    _refused(client.get(f"{base}/0.png?window=bone"), 422, "unknown window")


def test_busy_server_answers_503(tmp_path, serve_models):
    from covidct.web.worker import QUEUED

    with TestClient(make_app(tmp_path / "d", serve_models, max_pending=1)) as c:
        c.app.state.store.create("nifti", 1)  # one job already waiting
        assert c.app.state.store.count(QUEUED) == 1
        _refused(post(c, nifti_file(tmp_path / "s.nii.gz")), 503, "already waiting")


def test_an_unhandled_error_answers_500_with_the_security_headers_and_no_traceback(
        tmp_path, serve_models, caplog):
    """A broken job database (disk trouble, a stray write) fails inside a route: the answer is
    a bare 500 that still carries the security headers; the traceback goes to the log only."""
    data = tmp_path / "d"
    with TestClient(make_app(data, serve_models), raise_server_exceptions=False) as c:
        database = c.app.state.store.path
        database.write_bytes(b"this is not a database" * 200)
        with caplog.at_level(logging.ERROR, logger="covidct.web.headers"):
            answer = c.get("/api/scans/0123abcd")
        assert answer.status_code == 500
        assert answer.text == "Internal Server Error"
        for name in ("content-security-policy", "x-content-type-options", "x-frame-options",
                     "referrer-policy"):
            assert name in answer.headers, name
        assert "DatabaseError" in caplog.text  # the cause is logged for the operator
        assert c.get("/").status_code == 200  # and the server keeps answering


# -- token and PHI ----------------------------------------------------------------------

def test_bearer_token_guards_the_api(tmp_path, serve_models):
    with TestClient(make_app(tmp_path / "d", serve_models, token="s3cret")) as c:
        path = nifti_file(tmp_path / "s.nii.gz")
        assert post(c, path).status_code == 401
        assert post(c, path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        answer = post(c, path, headers=good)
        assert answer.status_code == 202
        assert c.get(answer.json()["url"]).status_code == 401
        assert wait(c, answer.json()["id"], headers=good)["status"] == "done"
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200
        assert '"token_required": true' in c.get("/").text


def test_no_phi_in_results_or_logs_unless_asked(tmp_path, serve_models, caplog):
    phi = dict(patient_name="DOE^JANE", patient_id="PID-991122")
    path = dicom_zip(tmp_path / "doe_jane.zip", **phi)
    caplog.set_level(logging.DEBUG)
    with TestClient(make_app(tmp_path / "d", serve_models)) as c:
        job = wait(c, post(c, path).json()["id"])
        text = str(job) + c.get(f"/api/scans/{job['id']}/report.html").text
    assert job["status"] == "done"
    for secret in ("DOE^JANE", "DOE JANE", "PID-991122", "doe_jane"):
        assert secret not in text and secret not in caplog.text
    with TestClient(make_app(tmp_path / "e", serve_models, show_phi=True)) as c:
        job = wait(c, post(c, path).json()["id"])
        assert "DOE^JANE" in str(job["result"]["phi"]) and '"show_phi": true' in c.get("/").text


# -- load -------------------------------------------------------------------------------

def test_twenty_concurrent_uploads_all_finish_with_their_own_results(tmp_path, serve_models):
    # Ten distinct small scans, each uploaded twice, all twenty at once.
    paths = [nifti_file(tmp_path / f"s{k}.nii.gz", seed=100 + k, shape=(12, 48, 48)) for k in range(10)]
    uploads = paths + paths[::-1]
    with TestClient(make_app(tmp_path / "d", serve_models, workers=2)) as c:
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda p: post(c, p), uploads))
        assert [a.status_code for a in answers] == [202] * 20
        assert len({a.json()["id"] for a in answers}) == 20
        jobs = [wait(c, a.json()["id"], timeout=240) for a in answers]
    direct = {path: _direct(serve_models, path) for path in paths}
    for path, job in zip(uploads, jobs):
        assert job["status"] == "done", job["error"]
        _assert_matches(job["result"], direct[path])
    covid = [j["result"]["methods"]["covidctnet"]["probabilities"]["COVID-19"] for j in jobs[:10]]
    assert len(set(np.round(covid, 9))) > 1  # distinct scans, distinct results: a mix-up would show


# -- the command ------------------------------------------------------------------------

def test_serve_command_refuses_clearly_without_models(tmp_path, capsys):
    from covidct.cli import main

    assert main(["serve", "--models", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no trained model (bit.pt or covidctnet.pt)" in err and str(tmp_path) in err


def test_serve_command_serves_whichever_models_exist(tmp_path, serve_models_dir):
    from covidct.cli.serve import load_served_models

    shutil.copy(serve_models_dir / "bit.pt", tmp_path / "bit.pt")
    assert [m.method for m in load_served_models(str(tmp_path))] == ["bit"]


# -- speed (issue 18): the same answers and pictures by the faster route ----------------------

def test_methods_on_onnx_run_at_once_with_the_sequential_answers(tmp_path, serve_models_dir,
                                                                  monkeypatch):
    pytest.importorskip("onnxruntime")
    from covidct.cli.serve import load_served_models
    from covidct.models import load_models

    monkeypatch.setenv("COVIDCT_CACHE", str(tmp_path / "cache"))
    models = load_served_models(str(serve_models_dir), "onnx")
    assert models.concurrent and [m.runtime for m in models] == ["onnx", "onnx"]
    zipped = dicom_zip(tmp_path / "a.zip", shape=(16, 64, 64))
    with TestClient(make_app(tmp_path / "data", models)) as c:
        job = wait(c, post(c, zipped).json()["id"], timeout=120)
        assert job["status"] == "done", job
        for overlay in ("gradcam", "infection"):
            answer = c.get(f"/api/scans/{job['id']}/slices/8.png", params={"overlay": overlay})
            assert answer.status_code == 200 and _png_size(answer.content) == (64, 64)
    one_by_one = load_models((), [serve_models_dir / "bit.pt", serve_models_dir / "covidctnet.pt"],
                             runtime="onnx")
    assert not one_by_one.concurrent
    _assert_matches(job["result"], _direct(one_by_one, tmp_path / "a" / "series"))


@pytest.mark.parametrize("shape,is_hu", [((3, 64, 48), True), ((2, 700, 600), True),
                                         ((3, 40, 40), False)])
def test_display_voxels_slice_by_slice_equal_the_whole_volume_rule(shape, is_hu):
    from covidct.explain.plotting import resize_to
    from covidct.web.viewer import DISPLAY_SIZE, display_voxels

    rng = np.random.default_rng(0)
    voxels = (rng.uniform(-40000, 40000, shape) if is_hu else rng.uniform(-20, 280, shape)
              ).astype(np.float32)
    low, high, dtype = (-32768, 32767, np.int16) if is_hu else (0, 255, np.uint8)
    scale = DISPLAY_SIZE / max(shape[1:])
    if scale < 1:
        size = (round(shape[1] * scale), round(shape[2] * scale))
        voxels_shown = np.stack([resize_to(v, size) for v in voxels])
    else:
        voxels_shown = voxels
    expected = np.clip(np.rint(voxels_shown), low, high).astype(dtype)
    got = display_voxels(voxels, is_hu)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
