"""Infection maps: a pre-processed slice minus what the frozen BCDU-Net makes of it.

The denoiser learnt to return control lungs, so whatever it removes (dense patches that
do not belong in a normal lung) is left in the difference. The per-slice differences are
stacked and resized along z to the 3D CNN's depth (50 slices in the method).

Cost control: BCDU-Net costs about 0.15 s per 128 x 128 slice on two CPU cores, and a
long series resampled to 1 mm has hundreds of slices that the final resize averages
down to 50. ``max_denoised_slices`` therefore caps the slices sent through the denoiser
at evenly spaced 1-mm slices (real slices, never blends, so the network sees what it was
trained on); 0 sends every slice, exactly as the method.
"""
from __future__ import annotations

import numpy as np

from ..scan import evenly_spaced
from .preprocess import resize_depth
from .settings import INPUT_BOTH, VolumeSettings


def denoise_indices(n_slices: int, max_slices: int) -> np.ndarray:
    """Evenly spaced slice indices, at most ``max_slices`` of them (0 = all)."""
    if max_slices <= 0 or n_slices <= max_slices:
        return np.arange(n_slices)
    return evenly_spaced(n_slices, max_slices)


def denoise(slices: np.ndarray, denoiser, batch_size: int = 4) -> np.ndarray:
    """Run the frozen denoiser over (N, H, W) slices in batches; returns (N, H, W) float32.

    Small batches: on a CPU, 4 slices of 128 x 128 per call ran faster than 16 (cache).
    """
    import torch

    device = next(denoiser.parameters()).device
    denoiser.eval()
    out = np.empty(slices.shape, dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(slices), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(slices[start:start + batch_size]))
            out[start:start + batch_size] = denoiser(batch[:, None].to(device))[:, 0].float().cpu().numpy()
    return out


def infection_map(volume: np.ndarray, denoiser, settings: VolumeSettings,
                  batch_size: int = 4) -> np.ndarray:
    """(volume_slices, S, S) float32 infection map of a pre-processed (z, S, S) volume."""
    chosen = volume[denoise_indices(len(volume), settings.max_denoised_slices)]
    difference = chosen - denoise(chosen, denoiser, batch_size)
    return resize_depth(difference, settings.volume_slices)


def with_volume(infection: np.ndarray, volume: np.ndarray, settings: VolumeSettings) -> np.ndarray:
    """The channels of a map-reading 3D CNN: the map, and for "infection+volume" the
    pre-processed volume resized alike as the second channel."""
    if settings.input != INPUT_BOTH:
        return infection
    return np.stack([infection, resize_depth(volume, settings.volume_slices)])


def map_to_scan_grid(infection: np.ndarray, volume_depth: int, scan_shape: tuple[int, int, int],
                     direction: np.ndarray) -> np.ndarray:
    """The (D, S, S) infection map resampled onto the scan's own (z, y, x) voxel grid, float32.

    Undoes pre-processing in reverse: the z resampling to 1-mm slices (``volume_depth`` of
    them, corners aligned) and the resize to D map slices (pixel centres), the in-plane resize
    of the whole field to S x S, and the canonical flips. Linear throughout, so a map value on
    the scan grid is within a voxel or two of where the network saw it (DICOM SEG, key images).
    """
    import torch
    import torch.nn.functional as F

    from .preprocess import canonical_flips

    infection = np.asarray(infection, dtype=np.float32)
    n, rows, cols = scan_shape
    depth = len(infection)
    volume_pos = np.arange(n) * (volume_depth - 1) / max(n - 1, 1)
    map_pos = np.clip((volume_pos + 0.5) * depth / volume_depth - 0.5, 0, depth - 1)
    low = np.floor(map_pos).astype(int)
    high = np.minimum(low + 1, depth - 1)
    weight = (map_pos - low).astype(np.float32)[:, None, None]
    planes = infection[low] * (1 - weight) + infection[high] * weight
    with torch.inference_mode():
        grid = F.interpolate(torch.from_numpy(np.ascontiguousarray(planes))[None], size=(rows, cols),
                             mode="bilinear", align_corners=False)[0].numpy()
    for axis, flip in enumerate(canonical_flips(direction)):
        if flip:
            grid = np.flip(grid, axis=axis)
    return np.ascontiguousarray(grid, dtype=np.float32)


def network_batch(inputs: np.ndarray, settings: VolumeSettings) -> np.ndarray:
    """(N, C, D, S, S) float32 what the 3D CNN is fed from (N, *settings.input_shape) inputs:
    each channel times its factor (``settings.channel_scales``). Training, prediction and
    the t-SNE features all go through here."""
    batch = np.asarray(inputs, dtype=np.float32).reshape(
        len(inputs), settings.channels, *settings.volume_shape)
    scales = np.asarray(settings.channel_scales, dtype=np.float32).reshape(1, -1, 1, 1, 1)
    return np.ascontiguousarray(batch * scales)
