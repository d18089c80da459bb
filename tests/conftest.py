"""Shared test fixtures: the reference data folder, tiny synthetic HU scans, the CLI runner."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# --runtime auto's int8 engine depends on the CPU (covidct.devices.int8_engine): the tests
# pin ONNX Runtime so that they expect the same on every machine; tests/test_int8.py's
# OpenVINO tests ask for OpenVINO themselves.
os.environ["COVIDCT_INT8_ENGINE"] = "onnxruntime"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only reference data beside the checkout (``<repo>/../shared``)."""
    if not SHARED.is_dir():
        pytest.skip(f"reference data folder {SHARED} not present")
    return SHARED


def build_hu_volume(shape=(12, 64, 64), spacing=(2.5, 0.7, 0.7), seed: int = 0,
                    origin=(-22.4, -30.0, -100.0)):
    """A small SYNTHETIC chest-like HU Scan: air, an elliptic body (fat rim, soft tissue),
    two lungs at about -850 HU, noise, and a scanner table below the body.

    Values are not whole numbers, so writers' int16 rounding is exercised.
    """
    from covidct.constants import SYNTHETIC_TAG
    from covidct.scan import Scan

    rng = np.random.default_rng(seed)
    z, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = h * 0.45, w * 0.5
    body = ((yy - cy) / (h * 0.32)) ** 2 + ((xx - cx) / (w * 0.42)) ** 2 <= 1
    inner = ((yy - cy) / (h * 0.28)) ** 2 + ((xx - cx) / (w * 0.38)) ** 2 <= 1
    lungs = np.zeros_like(body)
    for side in (-1, 1):
        lungs |= ((yy - cy) / (h * 0.2)) ** 2 + ((xx - cx - side * w * 0.18) / (w * 0.12)) ** 2 <= 1
    table_row = min(h - 2, int(cy + h * 0.32) + max(2, h // 16))
    plane = np.full((h, w), -1000.0, np.float32)
    plane[body] = -100.0
    plane[inner] = 40.0
    plane[lungs] = -850.0
    plane[table_row:table_row + max(1, h // 32), :] = 300.0
    vol = np.repeat(plane[None], z, axis=0)
    vol += rng.normal(0.0, 12.0, size=vol.shape).astype(np.float32)
    vol += np.linspace(0.0, 30.0, z, dtype=np.float32)[:, None, None]  # slices differ
    return Scan(voxels=vol.astype(np.float32), spacing=spacing, units="HU", origin=origin,
                source=f"synthetic-seed{seed}",
                metadata={"synthetic": True, "source_format": "synthetic",
                          "series_description": SYNTHETIC_TAG})


@pytest.fixture
def make_hu_volume():
    """``make_hu_volume(shape, spacing, seed)`` -> a small synthetic HU Scan (build_hu_volume)."""
    return build_hu_volume


def save_tiny_bit_model(path: Path, seed: int, resize: int, crop: int) -> Path:
    """An untrained tiny BiT slice classifier whose head is random (std 0.5) rather than
    BiT's zeros, so its outputs are not uniform; saved as a model file at ``path``."""
    import torch

    from covidct.bit.model import TINY_ARCH, SliceClassifier, build_network

    torch.manual_seed(seed)
    net = build_network(TINY_ARCH)
    for p in net.head.parameters():
        torch.nn.init.normal_(p, std=0.5)
    SliceClassifier(net=net.eval(), arch=TINY_ARCH, resize=resize, crop=crop).save(path)
    return path


def save_tiny_covidctnet_model(path: Path, seed: int = 7) -> Path:
    """An untrained CovidCTNet (40 px slices, 34-slice volumes, width-8 BCDU-Net) saved as a
    model file at ``path``: seconds to run, for tests of what prediction writes."""
    import torch

    from covidct.covidctnet.bcdunet import BCDUNet
    from covidct.covidctnet.pipeline import CovidCTNet
    from covidct.covidctnet.settings import VolumeSettings

    torch.manual_seed(seed)
    CovidCTNet.build(VolumeSettings(slice_size=40, volume_slices=34, denoiser_width=8),
                     denoiser=BCDUNet(8), training={"synthetic": True}).save(path)
    return path


@pytest.fixture(scope="session")
def run_cli():
    """``run_cli(*args)`` runs ``python -m covidct ARGS`` and returns (rc, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), HF_HUB_OFFLINE="1")

    def run(*args, timeout: float = 120, cwd=None, extra_env=None) -> tuple[int, str, str]:
        proc = subprocess.run([sys.executable, "-m", "covidct", *map(str, args)],
                              capture_output=True, text=True, env={**env, **(extra_env or {})},
                              timeout=timeout, cwd=cwd or REPO)
        return proc.returncode, proc.stdout, proc.stderr

    return run


@pytest.fixture(scope="session")
def synthetic_cohort(tmp_path_factory) -> Path:
    """A small `covidct synth` cohort (9 SYNTHETIC patients, 64x64, every output format),
    written once per test process for tests that need the project's own data layout."""
    from covidct.synth.cohort import CohortSettings, generate_cohort

    root = tmp_path_factory.mktemp("synthetic-cohort") / "cohort"
    settings = CohortSettings(patients=9, seed=3, matrix=64, slice_mm=(5.0, 5.0), max_slices=12)
    generate_cohort(root, settings, progress=False)
    return root


def save_tiny_covidctnet_model(path: Path) -> Path:
    """A small CovidCTNet (40 px slices, 34-slice 3D CNN input, BCDU-Net width 8) with random
    weights, saved as a model file at ``path``: fast enough for end-to-end tests."""
    import torch

    from covidct.covidctnet.bcdunet import BCDUNet
    from covidct.covidctnet.cache import ArrayCache
    from covidct.covidctnet.pipeline import CovidCTNet
    from covidct.covidctnet.settings import VolumeSettings

    torch.manual_seed(0)
    settings = VolumeSettings(slice_size=40, volume_slices=34, denoiser_width=8)
    CovidCTNet.build(settings, denoiser=BCDUNet(8), cache=ArrayCache(None)).save(path)
    return path
