"""`covidct serve` started as a user starts it (a subprocess on a free loopback port): the
token from the variable and the flag, the address check, security headers, upload limits, the
data folder's lock, file modes, zip member names, retention, and a restart after kill -9.

Each server takes 10-30 s to start on a busy machine (torch, the models), so the servers are
few and each test checks several things on one.
"""
from __future__ import annotations

import os
import sqlite3
import stat
import struct
import time
import zipfile
import zlib
from pathlib import Path

import httpx
import pytest

from _serve_fixtures import (ServeProcess, nifti_file, serve_models_dir, serve_process,  # noqa: F401
                             started)
from conftest import build_hu_volume

pytestmark = [pytest.mark.xdist_group("serve"), pytest.mark.slow]

TOKEN_ENV, TOKEN_FLAG = "token-from-the-variable", "token-from-the-flag"
SECURITY_HEADERS = {"content-security-policy", "x-content-type-options", "x-frame-options",
                    "referrer-policy"}


@pytest.fixture(scope="module")
def servers(serve_models_dir, tmp_path_factory):
    """Four servers started at once: token from the variable, the flag, both, neither.

    The one without a token also has small limits (1 MiB uploads, 1100 slices).
    """
    root = tmp_path_factory.mktemp("serve-process")
    setups = {"variable": ([], {"COVIDCT_TOKEN": TOKEN_ENV}),
              "flag": (["--token", TOKEN_FLAG], {}),
              "both": (["--token", TOKEN_FLAG], {"COVIDCT_TOKEN": TOKEN_ENV}),
              "neither": (["--max-upload-mb", "1", "--max-slices", "1100"], {})}
    running = {name: serve_process(serve_models_dir, root / name, *args, env=env, ready=False)
               for name, (args, env) in setups.items()}
    try:
        for server in running.values():
            server.wait_ready()
        yield running
    finally:
        for server in running.values():
            server.stop()


def _status(server: ServeProcess, method: str, path: str, token=None, **kw) -> int:
    headers = {"Authorization": token if isinstance(token, bytes) else f"Bearer {token}"} if token else {}
    return httpx.request(method, server.url + path, headers=headers, timeout=30, **kw).status_code


@pytest.mark.parametrize("setup, accepted, refused", [
    ("variable", TOKEN_ENV, [None, TOKEN_FLAG]),
    ("flag", TOKEN_FLAG, [None, TOKEN_ENV]),
    ("both", TOKEN_FLAG, [None, TOKEN_ENV]),  # the flag wins
    ("neither", None, []),
])
def test_token_from_the_variable_the_flag_both_or_neither(servers, setup, accepted, refused):
    server = servers[setup]
    for token in refused:
        for method, path in (("GET", "/api/models"), ("GET", "/api/scans/abc"),
                             ("DELETE", "/api/scans/abc"), ("POST", "/api/scans")):
            assert _status(server, method, path, token) == 401, (setup, token, method, path)
    assert _status(server, "GET", "/api/models", accepted) == 200
    assert _status(server, "DELETE", "/api/scans/abc", accepted) == 404
    says = "API token required" if accepted else "API token not required"
    assert says in server.output()
    assert "without a token" not in server.output()  # loopback: no warning either way
    if accepted:
        # Non-ASCII in the header is a wrong token (401), not a server error.
        for raw in ("Bearer café".encode(), b"Bearer \xff\xfe", f"Bearer {accepted}\xe9".encode("latin-1")):
            assert _status(server, "GET", "/api/models", raw) == 401
        assert "Traceback" not in server.output()


def test_every_answer_carries_the_security_headers_and_no_server_name(servers):
    server = servers["variable"]
    bearer = {"Authorization": f"Bearer {TOKEN_ENV}"}
    answers = [httpx.get(server.url + path, headers=headers, timeout=30) for path, headers in (
        ("/", {}), ("/docs", {}), ("/healthz", {}), ("/openapi.json", {}), ("/nowhere", {}),
        ("/api/models", {}), ("/api/models", bearer), ("/api/scans/abc", bearer),
        ("/api/scans/abc/slices/0.png", bearer))]
    answers.append(httpx.post(server.url + "/api/scans", headers=bearer, timeout=30,
                              files=[("files", ("notes.txt", b"x"))]))
    answers.append(httpx.post(servers["neither"].url + "/api/scans", timeout=30,  # 413
                              files=[("files", ("a.zip", b"0" * (3 << 20)))]))
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 404, 401, 200, 404, 404, 422, 413]
    for answer in answers:
        assert SECURITY_HEADERS <= set(answer.headers), answer.request.url
        assert "server" not in answer.headers
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["referrer-policy"] == "no-referrer"
    policy = answers[0].headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy and "http" not in policy
    # The page and /docs load nothing from outside, and the Swagger UI (CDN scripts) is gone.
    for page in answers[:2]:
        assert "http://" not in page.text and "https://" not in page.text
        assert "<script src" not in page.text and "<link" not in page.text
    assert httpx.get(server.url + "/docs/swagger", timeout=30).status_code == 404


def _png(width: int, height: int, real: bool = True) -> bytes:
    """A gray PNG of zeros: ``real`` compresses every row (tiny file, huge picture); otherwise
    only the header is right (enough for a header check)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    packer = zlib.compressobj(9)
    row = bytes(width + 1)
    data = b"".join(packer.compress(row) for _ in range(height if real else 1)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def test_upload_limits_through_the_server(servers, tmp_path):
    server = servers["neither"]  # --max-upload-mb 1 --max-slices 1100

    def post(files):
        answer = httpx.post(server.url + "/api/scans", files=files, timeout=120)
        return answer.status_code, answer.json()["detail"] if answer.status_code != 202 else ""

    # A 12000x12000 picture in a ~150 KB file: refused from its header, never decoded.
    big = _png(12000, 12000)
    assert len(big) < 1 << 20
    code, detail = post([("files", ("slice.png", big))])
    assert code == 413 and "12000x12000 pixels, more than the 16,777,216" in detail
    # Past Pillow's own bomb limit: still a 413, not a 500.
    code, detail = post([("files", ("slice.png", _png(20000, 20000, real=False)))])
    assert code == 413 and "more pixels than any slice may have" in detail
    # The size limit is stated as the user set it (no multipart slack in the text).
    code, detail = post([("files", ("scan.nii.gz", b"\x1f\x8b" + bytes(1_100_000)))])
    assert code == 413 and detail == "upload is larger than the 1 MiB limit"
    code, detail = post([("files", ("scan.zip", bytes(3 << 20)))])
    assert code == 413 and detail == "upload is larger than the 1 MiB limit"
    # More than Starlette's default 1000 files get through to the app's own checks...
    tiny = _png(8, 8)
    many = [("files", (f"{k:04d}.png", tiny)) for k in range(1049)] + [("files", ("x.txt", b"x"))]
    code, detail = post(many)
    assert code == 422 and "file type '.txt' is not accepted" in detail
    # ... and more than --max-slices are refused with the user's limit.
    code, detail = post([("files", (f"{k:04d}.png", tiny)) for k in range(1102)])
    assert code == 422 and "more than the 1100 slices accepted" in detail
    assert "Traceback" not in server.output()


def test_a_token_is_required_off_loopback_unless_explicitly_waived(serve_models_dir, tmp_path,
                                                                    started):
    refused = serve_process(serve_models_dir, tmp_path / "a", "--host", "0.0.0.0", ready=False)
    code, output = refused.finished()
    assert code == 2
    assert output.strip().splitlines() == [
        "covidct: error: refusing to listen on 0.0.0.0 without a token: anyone who can reach "
        "it could upload scans and read every result; set COVIDCT_TOKEN (or --token), or pass "
        "--insecure-no-token"]
    assert not (tmp_path / "a").exists()  # refused before touching anything
    waived = started(serve_models_dir, tmp_path / "b", "--host", "0.0.0.0", "--insecure-no-token")
    assert "INSECURE: listening on 0.0.0.0 without a token" in waived.output()
    assert _status(waived, "GET", "/api/models") == 200


def _named_dicom_zip(path: Path, seed: int, broken: int | None = None) -> Path:
    """A DICOM series zipped under names that carry a patient's name and record number."""
    from covidct.scanio import write_dicom_series

    files = write_dicom_series(build_hu_volume((12, 64, 64), seed=seed), path.with_suffix(""),
                               patient_name="DOE^JANE", patient_id="PID4242")
    with zipfile.ZipFile(path, "w") as zf:
        for k, file in enumerate(sorted(files)):
            data = file.read_bytes()
            zf.writestr(f"SMITH_MRN778899/IM{k:04d}_SMITH_MRN778899.dcm",
                        data[:400] if k == broken else data)
    return path


def _wait(server: ServeProcess, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{server.url}/api/scans/{job_id}", timeout=30).json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish: {job}\n{server.output()}")


def _upload(server: ServeProcess, path: Path) -> str:
    answer = httpx.post(server.url + "/api/scans", timeout=60,
                        files=[("files", (path.name, path.read_bytes()))])
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def _modes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode)
            for p in [folder, *folder.rglob("*")]}


def test_data_folder_lock_modes_names_retention_and_restart(serve_models_dir, tmp_path, started):
    data = tmp_path / "data"
    # A data folder that existed before, readable by everyone, with a world-readable database.
    (data / "results" / "0123abcd").mkdir(parents=True)
    for folder in (data, data / "results", data / "results" / "0123abcd"):
        os.chmod(folder, 0o755)
    (data / "results" / "0123abcd" / "result.json").write_text("{}")
    sqlite3.connect(data / "jobs.sqlite3").close()
    os.chmod(data / "jobs.sqlite3", 0o644)

    first = started(serve_models_dir, data, "--show-phi", "--keep-days", "30")
    good = _wait(first, _upload(first, _named_dicom_zip(tmp_path / "good.zip", seed=1)))
    bad = _wait(first, _upload(first, _named_dicom_zip(tmp_path / "bad.zip", seed=2, broken=3)))
    assert good["status"] == "done" and good["result"]["phi"]["PatientName"] == "DOE^JANE"
    assert bad["status"] == "failed"
    # Named by position (the reader's wording), never by the zip member's name.
    assert "file 4 of 12 in name order" in bad["error"], bad["error"]
    assert not any(name in bad["error"] for name in ("SMITH", "MRN", "IM0")), bad["error"]
    slice_png = httpx.get(f"{first.url}/api/scans/{good['id']}/slices/5.png?overlay=infection",
                          timeout=60)
    assert slice_png.status_code == 200 and slice_png.content.startswith(b"\x89PNG")

    # A second server on the same folder is refused, and the first keeps its jobs.
    second = serve_process(serve_models_dir, data, ready=False)
    code, output = second.finished()
    assert code == 2 and output.strip().splitlines() == [
        f"covidct: error: {data}: another covidct serve (process {first.proc.pid}) is using "
        "this data folder; stop it, or give this one another --data folder"]
    assert _wait(first, good["id"])["status"] == "done"

    # Everything under the folder is the server's user's only, whatever it was before.
    modes = _modes(data)
    assert "jobs.sqlite3" in modes and "server.lock" in modes
    for name, mode in modes.items():
        expected = 0o700 if (data / name).is_dir() else 0o600
        assert mode == expected, f"{name}: {oct(mode)}"
    # What the viewer needs, stored uncompressed at display resolution.
    viewer = data / "results" / good["id"] / "viewer"
    assert sorted(p.name for p in viewer.iterdir()) == ["infection.npy", "viewer.json", "voxels.npy"]
    assert not (data / "results" / good["id"] / "viewer.npz").exists()
    # The zip's folder and file names are nowhere: not in the database, results or renders.
    for path in data.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert b"MRN778899" not in content and b"SMITH" not in content, path

    # The good job finished 40 days ago, as far as retention can tell; then the server dies.
    db = sqlite3.connect(data / "jobs.sqlite3", timeout=30)
    db.execute("UPDATE jobs SET finished = ? WHERE id = ?", (time.time() - 40 * 86400, good["id"]))
    db.commit()
    db.close()
    first.stop(kill=True)

    # After kill -9 the lock is gone with the process; at start-up old jobs are deleted.
    again = started(serve_models_dir, data, "--keep-days", "30")
    assert httpx.get(f"{again.url}/api/scans/{good['id']}", timeout=30).status_code == 404
    assert not (data / "results" / good["id"]).exists()
    kept = httpx.get(f"{again.url}/api/scans/{bad['id']}", timeout=30).json()
    assert kept["status"] == "failed" and kept["error"] == bad["error"]
    assert "deleted 1 job(s) finished more than 30 day(s) ago" in again.output()
    with sqlite3.connect(data / "jobs.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
