"""CovidCTNet's 3D CNN, layer for layer as published.

Five stages of two 3x3x3 convolutions (8, 16, 32, 64, 128 channels, ReLU, He-uniform
initialisation, also for the dense layer) each followed by 2x2x2 max pooling, then flatten -> dense 32 (ReLU) ->
dropout 0.3 -> dense to the classes. As in the method's code the very first convolution
has no padding (50x128x128 -> 48x126x126) and the others keep the size, which gives the
published 128 x 1 x 3 x 3 = 1152 flattened features for a 50 x 128 x 128 input.

``norm`` ("batch" or "group"; default "none" = the method) adds a normalisation layer after
every convolution, before its ReLU: this project's option (``--cnn-norm``). Without one the
small-scale network sat at the uniform prediction for tens of epochs before it learnt
(README, "CovidCTNet's map, checked against truth").

``in_channels`` (default 1, the method) is 2 for this project's ``--cnn-input
infection+volume``: the map and the CT as two channels of the first convolution.

``forward`` returns logits (softmax is applied by ``predict_proba`` and folded into the
cross-entropy loss during training).

:class:`CNN3DMembers` (``--cnn-members K``; not in the method) averages the class
probabilities of K such networks trained from different seeds on the same inputs: on the
demo's cohorts one network's held-out accuracy moved by up to 4 patients of 12 with the
training seed alone, and the average of four was steadier (DEMO.md, "Seventh round").
"""
from __future__ import annotations

import torch
from torch import nn

from .settings import CNN_NORMS

STAGE_CHANNELS = (8, 16, 32, 64, 128)
NORMS = CNN_NORMS
#: GroupNorm's group size (channels per group): 8 gives one group in the first stage.
GROUP_CHANNELS = 8


def _norm(kind: str, channels: int) -> list[nn.Module]:
    if kind == "batch":
        return [nn.BatchNorm3d(channels)]
    if kind == "group":
        return [nn.GroupNorm(max(1, channels // GROUP_CHANNELS), channels)]
    return []


def _stage(in_ch: int, out_ch: int, first: bool, norm: str = "none") -> list[nn.Module]:
    return [nn.Conv3d(in_ch, out_ch, 3, padding=0 if first else 1), *_norm(norm, out_ch),
            nn.ReLU(inplace=True),
            nn.Conv3d(out_ch, out_ch, 3, padding=1), *_norm(norm, out_ch), nn.ReLU(inplace=True),
            nn.MaxPool3d(2)]


def flattened_size(input_shape: tuple[int, int, int]) -> int:
    """Features after the five stages for a (D, H, W) input."""
    dims = [s - 2 for s in input_shape]  # the unpadded first convolution
    for _ in STAGE_CHANNELS:
        dims = [d // 2 for d in dims]
    if min(dims) < 1:
        raise ValueError(f"input {input_shape} is too small for five 2x poolings")
    return STAGE_CHANNELS[-1] * dims[0] * dims[1] * dims[2]


class CNN3D(nn.Module):
    def __init__(self, n_classes: int = 3, input_shape: tuple[int, int, int] = (50, 128, 128),
                 dropout: float = 0.3, norm: str = "none", in_channels: int = 1):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown 3D CNN normalisation {norm!r}; choose from {', '.join(NORMS)}")
        self.input_shape = tuple(input_shape)
        self.in_channels = in_channels
        layers: list[nn.Module] = []
        in_ch = in_channels
        for k, ch in enumerate(STAGE_CHANNELS):
            layers += _stage(in_ch, ch, first=k == 0, norm=norm)
            in_ch = ch
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flattened_size(self.input_shape), 32), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(32, n_classes))
        for m in self.modules():
            if isinstance(m, (nn.Conv3d, nn.Linear)):
                nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        # The softmax layer keeps Keras' default (Glorot uniform), as in the method's code.
        nn.init.xavier_uniform_(self.classifier[-1].weight)
        # Channels-last 3D tensors take oneDNN's fast convolutions on CPU: a training step of
        # the demo's 3D CNN (batch 8, 2 x 40 x 48 x 48, BatchNorm) ran 2.1x faster on one
        # thread, 1.2-1.3x on two.
        # Weights loaded later are copied into these tensors and keep the layout.
        self.to(memory_format=torch.channels_last_3d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or tuple(x.shape[1:]) != (self.in_channels, *self.input_shape):
            raise ValueError(f"3D CNN needs (N, {self.in_channels}, "
                             f"{', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}")
        if not torch.onnx.is_in_onnx_export():  # ONNX has no memory layouts (nor needs one)
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return self.classifier(self.features(x))

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self(x), dim=1)


class CNN3DMembers(nn.Module):
    """K :class:`CNN3D` networks whose class probabilities are averaged. ``forward`` returns
    the log of the mean probability, so that softmax of it is that mean (what prediction,
    export and evaluation read, unchanged) and cross-entropy on it is the ensemble's loss."""

    def __init__(self, members: list[CNN3D]):
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two 3D CNNs")
        self.members = nn.ModuleList(members)
        self.input_shape = members[0].input_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = torch.stack([torch.softmax(m(x), dim=1) for m in self.members])
        return torch.log(probabilities.mean(0).clamp_min(1e-12))

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self(x), dim=1)


def build_cnn(n_classes: int, input_shape: tuple[int, int, int], norm: str = "none",
              members: int = 1, in_channels: int = 1) -> nn.Module:
    """One :class:`CNN3D`, or ``members`` of them averaged (:class:`CNN3DMembers`)."""
    def one() -> CNN3D:
        return CNN3D(n_classes, input_shape, norm=norm, in_channels=in_channels)

    return one() if members == 1 else CNN3DMembers([one() for _ in range(members)])
