"""CovidCTNet's settings, with the method's defaults, saved inside every model file.

Prediction reads them back from the model, so a model is always applied with the
pre-processing it was trained with.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import ModelError

#: What the 3D CNN reads: the method's infection maps, or (the ablation of the method's
#: Fig. 1) the plain pre-processed volume without BCDU-Net and Perlin noise, or (this
#: project's variant, ``--cnn-input``) both as two channels: on the synthetic cohorts the map
#: loses CAP's consolidation, which the CT itself shows (DEMO.md, "Eighth round").
INPUT_INFECTION = "infection"
INPUT_VOLUME = "volume"
INPUT_BOTH = "infection+volume"
INPUTS = (INPUT_INFECTION, INPUT_VOLUME, INPUT_BOTH)
#: What the main 3D CNN of train-covidctnet may read (the plain volume is the ablation's).
MAIN_INPUTS = (INPUT_INFECTION, INPUT_BOTH)
#: The 3D CNN's normalisation options (cnn3d.CNN3D's ``norm``), here so that reading settings
#: does not import torch.
CNN_NORMS = ("none", "batch", "group")
#: The 3D CNN's learning-rate schedules after the warm-up (train.TrainConfig.lr_schedule).
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class VolumeSettings:
    spacing_mm: float = 1.0        # isotropic resampling (the method: 1 x 1 x 1 mm)
    window: str = "covidctnet"     # HU [-1000, 400] -> [0, 1]
    slice_size: int = 128          # in-plane size after resizing (z kept)
    volume_slices: int = 50        # depth of the 3D CNN input
    #: Slices passed through BCDU-Net per scan before the infection maps are resized to
    #: ``volume_slices``: evenly spaced 1-mm slices (0 = all of them, as the method). Bounds
    #: the cost of a long series; see infection.denoise_indices.
    max_denoised_slices: int = 100
    denoiser_width: int = 32       # BCDU-Net base channels (32-64-128-256 in the method)
    input: str = INPUT_INFECTION
    #: The 3D CNN reads its input times this factor (1: as the method). Training with
    #: ``standardise_inputs`` sets it to 1 / SD of the training inputs: infection maps have
    #: an SD near 0.05, and the CNN's output (ReLU layers, no normalisation) scales with its
    #: input, so unscaled maps make every Adam step move the prediction ~20x less.
    input_scale: float = 1.0
    #: With ``input`` "infection+volume": the factor of the CT channel (the map's is
    #: ``input_scale``); ``standardise_inputs`` scales each channel to SD 1 on its own.
    volume_scale: float = 1.0
    #: Multiply the 3D CNN's input by the lung mask (covidct.lungs) on its grid. The method
    #: has no lung mask (False); True is this project's variant, with an ablation row.
    mask_input: bool = False
    #: Normalisation after each of the 3D CNN's convolutions: "none" (the method), "batch"
    #: or "group" (cnn3d.CNN3D; this project's variant).
    cnn_norm: str = "none"
    #: The 3D CNN reads max(map - input_floor, 0) instead of the signed infection map (None:
    #: the map as it is, the method). Healthy lung leaves a residual too (vessels, and the
    #: lung's edge against the chest wall and heart on the coarse grid): a floor drops the
    #: small values it is made of and the negative half, which no lesion makes.
    input_floor: float | None = None
    #: With ``mask_input``: shave this many voxels off the lung mask's outline in every slice
    #: before it multiplies what the 3D CNN reads (0: the mask as it is). On the coarse grid
    #: the outline's voxels hold chest wall and heart as well as lung, and the denoiser's
    #: residual there is as large as a small lesion's, in every class.
    mask_erode: int = 0
    #: 3D CNNs trained from different seeds whose probabilities are averaged (1: one, the
    #: method; cnn3d.CNN3DMembers).
    cnn_members: int = 1

    def __post_init__(self) -> None:
        # BCDU-Net pools three times (multiples of 8); the 3D CNN's unpadded first conv and
        # five 2x poolings need at least 34 voxels along every axis.
        if self.slice_size % 8 or self.slice_size < 40:
            raise ModelError(f"slice_size must be a multiple of 8 and >= 40, got {self.slice_size}")
        if self.volume_slices < 34:
            raise ModelError(f"volume_slices must be >= 34, got {self.volume_slices}")
        if self.input not in INPUTS:
            raise ModelError(f"unknown 3D CNN input {self.input!r}; choose from {', '.join(INPUTS)}")
        if self.cnn_norm not in CNN_NORMS:
            raise ModelError(f"unknown cnn_norm {self.cnn_norm!r}; choose from {', '.join(CNN_NORMS)}")
        if not (self.input_scale > 0 and self.volume_scale > 0):
            raise ModelError(f"input_scale and volume_scale must be positive, got "
                             f"{self.input_scale}, {self.volume_scale}")
        if self.input_floor is not None and not 0.0 <= self.input_floor < 1.0:
            raise ModelError(f"input_floor must be in [0, 1) (the map's window units), "
                             f"got {self.input_floor}")
        if self.cnn_members < 1:
            raise ModelError(f"cnn_members must be at least 1, got {self.cnn_members}")
        if self.mask_erode < 0:
            raise ModelError(f"mask_erode must not be negative, got {self.mask_erode}")
        if self.spacing_mm <= 0 or self.max_denoised_slices < 0:
            raise ModelError("spacing_mm must be positive and max_denoised_slices >= 0")

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        return self.volume_slices, self.slice_size, self.slice_size

    @property
    def reads_map(self) -> bool:
        """Whether the 3D CNN reads an infection map (and the model needs its BCDU-Net)."""
        return self.input in (INPUT_INFECTION, INPUT_BOTH)

    @property
    def channels(self) -> int:
        """The 3D CNN's input channels: the map and the CT for "infection+volume", else one."""
        return 2 if self.input == INPUT_BOTH else 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One scan's network input as arrays hold it: (D, S, S), or (2, D, S, S) with the
        map first for "infection+volume"."""
        return self.volume_shape if self.channels == 1 else (self.channels, *self.volume_shape)

    @property
    def channel_scales(self) -> tuple[float, ...]:
        """The factor each input channel is read times (map first)."""
        return (self.input_scale,) if self.channels == 1 else (self.input_scale, self.volume_scale)

    def preprocess_key(self) -> dict[str, Any]:
        """The settings that determine the pre-processed volume (the cache key part)."""
        return {"spacing_mm": self.spacing_mm, "window": self.window, "slice_size": self.slice_size}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VolumeSettings":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ModelError(f"model settings have unknown keys {sorted(unknown)}; upgrade covidct")
        return cls(**data)
