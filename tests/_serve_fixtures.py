"""Fixtures shared by the `covidct serve` tests: tiny untrained models and upload files.

The models are untrained (random weights, marked as trained on synthetic data): the web
layer's job is to run whatever model it is given and report it faithfully, which the tests
check against a direct ``model.predict`` on the same file.
"""
from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import pytest

from conftest import build_hu_volume

TINY_VOLUME = dict(slice_size=40, volume_slices=34, denoiser_width=8)


@pytest.fixture(scope="session")
def serve_models_dir(tmp_path_factory) -> Path:
    """bit.pt (tiny ResNet-v2, 40 px) and covidctnet.pt (40 px, 34 slices, width-8 BCDU-Net)."""
    import torch

    from covidct.bit.model import TINY_ARCH, SliceClassifier, build_network
    from covidct.covidctnet.bcdunet import BCDUNet
    from covidct.covidctnet.pipeline import CovidCTNet
    from covidct.covidctnet.settings import VolumeSettings

    folder = tmp_path_factory.mktemp("serve-models")
    torch.manual_seed(7)
    SliceClassifier(net=build_network(TINY_ARCH).eval(), arch=TINY_ARCH, resize=48, crop=40,
                    trained_on={"synthetic": True, "data": "untrained test model"}
                    ).save(folder / "bit.pt")
    CovidCTNet.build(VolumeSettings(**TINY_VOLUME), denoiser=BCDUNet(8),
                     training={"synthetic": True}).save(folder / "covidctnet.pt")
    return folder


@pytest.fixture(scope="session")
def serve_models(serve_models_dir):
    from covidct.cli.serve import load_served_models

    return load_served_models(str(serve_models_dir))


def make_app(data_dir: Path, models, **settings):
    from covidct.web.app import create_app
    from covidct.web.config import ServeConfig

    return create_app(ServeConfig(data_dir=data_dir, **settings), models)


def dicom_zip(path: Path, seed: int = 0, shape=(12, 64, 64), **writer) -> Path:
    """A zip of a synthetic DICOM series (one folder inside, as exports usually are)."""
    from covidct.scanio import write_dicom_series

    folder = path.with_suffix("")
    write_dicom_series(build_hu_volume(shape, seed=seed), folder / "series", **writer)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted((folder / "series").iterdir()):
            zf.write(file, f"series/{file.name}")
    return path


def nifti_file(path: Path, seed: int = 0, shape=(12, 64, 64)) -> Path:
    from covidct.scanio import write_nifti

    return write_nifti(build_hu_volume(shape, seed=seed), path)


def png_files(folder: Path, seed: int = 0, shape=(12, 64, 64)) -> list[Path]:
    from covidct.scanio import write_png_slices

    return sorted(write_png_slices(build_hu_volume(shape, seed=seed), folder))


def post(client, *paths: Path, names=None, headers=None):
    names = names or [p.name for p in paths]
    files = [("files", (name, p.read_bytes())) for name, p in zip(names, paths)]
    return client.post("/api/scans", files=files, headers=headers or {})


def wait(client, job_id: str, timeout: float = 60, headers=None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/scans/{job_id}", headers=headers or {}).json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {job}")


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


# -- `covidct serve` as a user starts it: a subprocess on a free loopback port -------------

def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServeProcess:
    """A running `python -m covidct serve ...`; ``output()`` is what it printed so far."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None):
        import os
        import subprocess
        import sys
        import threading

        import covidct

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("COVIDCT_")}
        src = str(Path(covidct.__file__).resolve().parents[1])
        environ["PYTHONPATH"] = src + os.pathsep + environ.get("PYTHONPATH", "")
        environ.update(env or {})
        self.proc = subprocess.Popen([sys.executable, "-m", "covidct", "serve",
                                      "--port", str(self.port), *args],
                                     env=environ, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._lines.append(line)

    def output(self) -> str:
        return "".join(self._lines)

    def wait_ready(self, timeout: float = 180) -> "ServeProcess":
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._reader.join(5)
                raise AssertionError(f"covidct serve exited {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"covidct serve did not answer in {timeout} s:\n{self.output()}")

    def finished(self, timeout: float = 60) -> tuple[int, str]:
        """Wait for the process to exit on its own; its exit code and output."""
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code, self.output()

    def stop(self, kill: bool = False) -> None:
        import subprocess

        if self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)


def serve_process(models_dir: Path, data_dir: Path, *args: str, env=None,
                  ready: bool = True) -> ServeProcess:
    server = ServeProcess(["--models", str(models_dir), "--data", str(data_dir), *args], env)
    return server.wait_ready() if ready else server


@pytest.fixture
def started():
    """Call it like serve_process; every server it started is stopped after the test."""
    servers = []

    def start(*args, **kwargs):
        servers.append(serve_process(*args, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()
