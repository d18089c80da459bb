"""CovidCTNet (Javaheri et al., npj Digit Med 2021): BCDU-Net infection maps and a 3D CNN.

    scan --preprocess--> (z, 128, 128) in [0, 1] at 1 mm        preprocess.py
         --BCDU-Net---> slice minus denoised slice, z -> 50       bcdunet.py, infection.py
         --3D CNN-----> Control / CAP / COVID-19                  cnn3d.py
    training: Perlin pseudo-infection on control slices          perlin.py, train.py
    the whole trained pipeline in one model file                 pipeline.py (CovidCTNet)

Modules import torch only when a network is built or run.
"""
from __future__ import annotations

from .settings import VolumeSettings

__all__ = ["VolumeSettings"]
