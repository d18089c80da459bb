"""Slices in, tensors out: the COVIDx dataset, BiT-HyperRule transforms, sampling and mixup.

Every random choice of training (which slices form step s, their crops and flips, the
mixup lambda) is a pure function of (seed, step). A resumed run therefore sees exactly the
batches the uninterrupted run would have seen, whatever the number of loader workers or
processes, without having to save any random state.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from ..constants import SYNTHETIC_TAG
from ..covidx import SliceRecord, check_images, read_split
from ..errors import CovidctError, DatasetError
from ..windowing import COVIDX_LUNG, get_window, lung_box
from .settings import check_crop_rule

#: BiT normalisation: pixels in [0, 1] -> [-1, 1] (timm's IMAGENET_INCEPTION_MEAN/STD).
MEAN, STD = 0.5, 0.5
#: Images whose headers are read concurrently when a dataset is checked.
_CHECK_THREADS = 8


# Pre-processing -----------------------------------------------------------------------

def crop_box(pixels: np.ndarray, box: Sequence[int]) -> np.ndarray:
    """Cut an inclusive (xmin, ymin, xmax, ymax) box out of a 2D uint8 slice."""
    xmin, ymin, xmax, ymax = (int(v) for v in box)
    return pixels[ymin:ymax + 1, xmin:xmax + 1]


def input_box(pixels: np.ndarray, box: Sequence[int], crop_rule: str = "box") -> tuple[int, int, int, int]:
    """The box a classifier with ``crop_rule`` reads of an 8-bit slice whose body box is ``box``."""
    if check_crop_rule(crop_rule) == "lungs":
        return lung_box(pixels, tuple(int(v) for v in box))
    return tuple(int(v) for v in box)


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 (H, W) -> uint8 (1, H, W). Workers hand over 8-bit single-channel pictures
    (12x less to copy between processes than 3-channel float); :func:`normalize` finishes
    the job on the training device."""
    return torch.from_numpy(np.array(pixels, dtype=np.uint8, copy=True)).unsqueeze(0)


def normalize(images: torch.Tensor, device: torch.device | str = "cpu",
              channels_last: bool = False) -> torch.Tensor:
    """uint8 (N, 1, H, W) grayscale -> float (N, 3, H, W) in [-1, 1], as BiT expects."""
    x = images.to(device, non_blocking=True).float().div_(255.0).sub_(MEAN).div_(STD)
    x = x.expand(-1, 3, -1, -1)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    return x.contiguous(memory_format=memory)


def _resize(pixels: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.BILINEAR))


@lru_cache(maxsize=None)
def rewindow_table(window: str) -> np.ndarray:
    """The table that re-windows an 8-bit COVIDx (lung-window) picture to the named window."""
    return get_window(window).table_from(COVIDX_LUNG)


def _rewindowed(pixels: np.ndarray, window: str | None) -> np.ndarray:
    """``pixels`` as the classifier reads them: in ``window`` (None: the picture as it is)."""
    return pixels if window is None else rewindow_table(window)[pixels]


@dataclass(frozen=True)
class EvalTransform:
    """BiT-HyperRule evaluation: resize the cropped slice to (crop, crop). ``rewindow``: first
    turn the COVIDx-window picture into that window (a model's ``rewindow``)."""

    crop: int
    rewindow: str | None = None

    def __call__(self, pixels: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        return self.augment(self.prepare(pixels), rng)

    def prepare(self, pixels: np.ndarray) -> np.ndarray:
        """The deterministic part (what :class:`COVIDxDataset` may keep): the resized slice."""
        return _resize(_rewindowed(pixels, self.rewindow), self.crop)

    def augment(self, prepared: np.ndarray, rng: np.random.Generator | None = None) -> torch.Tensor:
        return to_tensor(prepared)


@dataclass(frozen=True)
class TrainTransform:
    """BiT-HyperRule training: resize to (resize, resize), random (crop, crop), random h-flip
    (``rewindow`` as :class:`EvalTransform`'s)."""

    resize: int
    crop: int
    rewindow: str | None = None
    jitter: bool = False

    def __call__(self, pixels: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        return self.augment(self.prepare(pixels), rng)

    def prepare(self, pixels: np.ndarray) -> np.ndarray:
        """The deterministic part (what :class:`COVIDxDataset` may keep): the resized slice."""
        return _resize(_rewindowed(pixels, self.rewindow), self.resize)

    def augment(self, img: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        if self.jitter:
            img = _jittered(img, self.crop, rng)
        else:
            top, left = (int(v) for v in rng.integers(0, self.resize - self.crop + 1, size=2))
            img = img[top:top + self.crop, left:left + self.crop]
        if rng.random() < 0.5:
            img = img[:, ::-1]
        return to_tensor(img)


def _jittered(img: np.ndarray, crop: int, rng: np.random.Generator) -> np.ndarray:
    """A random square of 0.9 x crop up to the whole picture, turned up to 10 degrees and
    resized to ``crop``; contrast moved by up to 5%, brightness by up to 8 grey levels (about
    30 HU in the lung window). Patients differ in size, posture and scanner calibration, which
    a few training patients do not span."""
    size = img.shape[0]
    side = int(rng.integers(int(0.9 * crop), size + 1))
    top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    region = img[top:top + side, left:left + side]
    edge = np.concatenate([region[0], region[-1], region[:, 0], region[:, -1]])
    turned = Image.fromarray(np.ascontiguousarray(region)).rotate(
        float(rng.uniform(-10, 10)), resample=Image.BILINEAR, fillcolor=int(np.median(edge)))
    out = np.asarray(turned.resize((crop, crop), Image.BILINEAR), dtype=np.float32)
    out = (out - 128.0) * rng.uniform(0.95, 1.05) + 128.0 + rng.uniform(-8.0, 8.0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """An 8-bit slice picture as uint8 (H, W); RGB pictures are converted to luminance."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "RGB", "RGBA", "P", "I;16", "I"):
                raise DatasetError(f"unsupported image mode {img.mode}", path)
            if img.mode in ("I;16", "I"):
                raise DatasetError("16-bit pictures are not windowed slices; give 8-bit PNGs "
                                   "(or the DICOM/NIfTI scan)", path)
            return np.asarray(img.convert("L"))
    except DatasetError:
        raise
    except (OSError, ValueError) as exc:
        raise DatasetError(f"unreadable image ({exc})", path) from None


# The COVIDx dataset -------------------------------------------------------------------

class COVIDxDataset(torch.utils.data.Dataset):
    """COVIDx CT slices (``filename class xmin ymin xmax ymax``) cropped to their body box
    (``crop_rule`` "lungs": to the lungs' box inside it, :func:`input_box`).

    Items are addressed by ``(index, seed)``; the seed drives the random crop and flip of
    that item, so augmentation is reproducible in any worker. A plain int index uses seed 0.
    Missing images, unreadable headers and boxes outside their image are reported, the
    first few by name, when the dataset is built (``check=True``), not in the middle of training.

    ``keep_prepared``: keep each slice's deterministic preparation (decoded, cropped, resized:
    ``transform.prepare``) after its first read, so that later epochs only augment it. A
    training run reads every slice many times, and decoding the 512 x 512 picture again cost
    more CPU than the training step itself at the demo's 64-pixel size (4 ms a slice, 0.13 s
    a batch of 32, against 0.08 s for the step). Costs ``len(records) * resize**2`` bytes in
    each process that reads (:func:`fits_in_memory`); the items are the same either way.
    """

    def __init__(self, split: str | os.PathLike | Sequence[SliceRecord], image_dir: str | os.PathLike,
                 transform=None, check: bool = True, keep_prepared: bool = False,
                 crop_rule: str = "box"):
        self.split_file = None if isinstance(split, (list, tuple)) else Path(split)
        self.records: list[SliceRecord] = list(split) if self.split_file is None else read_split(split)
        if not self.records:
            raise DatasetError("no slices to use", self.split_file or image_dir)
        self.image_dir = Path(image_dir)
        self.transform = transform or EvalTransform(224)
        self.crop_rule = check_crop_rule(crop_rule)  # an unknown rule fails now, not in a worker
        self._prepared: dict[int, np.ndarray] | None = {} if keep_prepared else None
        if check:
            check_images(self.records, self.image_dir)
            check_headers(self.records, self.image_dir)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.records], dtype=np.int64)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = item if isinstance(item, tuple) else (item, 0)
        record = self.records[index]
        rng = np.random.default_rng(seed)
        if self._prepared is None:
            return self.transform(self._read(record), rng), record.label
        prepared = self._prepared.get(index)
        if prepared is None:
            prepared = self._prepared[index] = self.transform.prepare(self._read(record))
        return self.transform.augment(prepared, rng), record.label

    def _read(self, record: SliceRecord) -> np.ndarray:
        pixels = read_gray(self.image_dir / record.filename)
        return crop_box(pixels, input_box(pixels, record.box, self.crop_rule))


#: Memory that one process may spend keeping prepared training slices (keep_prepared).
PREPARED_BYTES = 512 * 2**20


def fits_in_memory(n_slices: int, side: int) -> bool:
    """Whether ``n_slices`` prepared ``side`` x ``side`` slices stay within PREPARED_BYTES
    (in each reading process): true at demo size (1602 slices at 72 pixels:
    8 MB), false for the whole of COVIDx at the paper's 512 (94 GB)."""
    return n_slices * side * side <= PREPARED_BYTES


def check_headers(records: Sequence[SliceRecord], image_dir: Path, show: int = 5) -> None:
    """Open every listed image's header (cheap) and check that its box lies inside it."""
    def problem(record: SliceRecord) -> str | None:
        try:
            with Image.open(image_dir / record.filename) as img:
                width, height = img.size
        except (OSError, ValueError):
            return f"{record.filename} (unreadable)"
        xmin, ymin, xmax, ymax = record.box
        if xmax >= width or ymax >= height:
            return f"{record.filename} (box {record.box} outside {width}x{height})"
        return None

    with ThreadPoolExecutor(_CHECK_THREADS) as pool:
        bad = [p for p in pool.map(problem, records, chunksize=256) if p]
    if bad:
        more = f" and {len(bad) - show} more" if len(bad) > show else ""
        raise DatasetError(f"{len(bad)} of {len(records)} listed images are unusable: "
                           f"{', '.join(bad[:show])}{more}", image_dir)


def subsample_per_class(records: Sequence[SliceRecord], per_class: int, seed: int) -> list[SliceRecord]:
    """At most ``per_class`` slices of each class, drawn at random (the data-size experiment)."""
    rng = np.random.default_rng([seed, 7919])
    labels = np.array([r.label for r in records])
    keep: list[int] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        take = min(per_class, len(members))
        keep.extend(rng.choice(members, size=take, replace=False).tolist())
    return [records[i] for i in sorted(keep)]


def find_synthetic_marker(*folders: str | os.PathLike) -> bool:
    """True when a README/marker file in (or just above) a data folder says it is synthetic."""
    seen: set[Path] = set()
    for folder in folders:
        folder = Path(folder).resolve()
        for candidate_dir in (folder, folder.parent):
            if candidate_dir in seen or not candidate_dir.is_dir():
                continue
            seen.add(candidate_dir)
            for path in candidate_dir.iterdir():
                if path.is_file() and path.name.upper().startswith(("README", "SYNTHETIC")):
                    try:
                        if SYNTHETIC_TAG in path.read_text(encoding="utf-8", errors="ignore")[:100_000]:
                            return True
                    except OSError:
                        continue
    return False


# Step-based sampling ------------------------------------------------------------------

class StepBatchSampler(torch.utils.data.Sampler):
    """Micro-batches of ``(index, augmentation seed)`` for steps ``start .. total-1``.

    Step s uses global positions ``s*B .. s*B+B-1`` of an endless stream of epochs, each a
    fresh permutation of the data (or, ``balanced``, of class-uniform draws). Rank r of a
    ``world``-process job takes positions ``k`` with ``k % world == r``; each rank's share is
    cut into ``batch_split`` micro-batches for gradient accumulation. Together the ranks
    always see the same global batch as a single process would.
    """

    def __init__(self, labels: np.ndarray, batch_size: int, total_steps: int, seed: int,
                 start_step: int = 0, rank: int = 0, world: int = 1, batch_split: int = 1,
                 balanced: bool = False, patients: Sequence[str] | None = None):
        per_rank, rest = divmod(batch_size, world)
        if rest or per_rank % batch_split:
            raise CovidctError(
                f"batch size {batch_size} must split evenly over {world} process(es) "
                f"and then into {batch_split} micro-batch(es)")
        self.labels = np.asarray(labels)
        self.batch_size, self.total, self.seed = batch_size, total_steps, seed
        self.start, self.rank, self.world = start_step, rank, world
        self.split, self.balanced = batch_split, balanced
        self._by_class = [np.flatnonzero(self.labels == c) for c in np.unique(self.labels)]
        # ``patients`` (with ``balanced``): a class's draw picks one of its patients first, then
        # one of that patient's slices, so a patient with 67 slices weighs no more than one with 14.
        self._by_patient = None if patients is None else [
            [members[np.asarray(patients)[members] == p] for p in np.unique(np.asarray(patients)[members])]
            for members in self._by_class]
        self._perm: tuple[int, np.ndarray] = (-1, np.empty(0, dtype=np.int64))

    def __len__(self) -> int:
        return max(0, self.total - self.start) * self.split

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.total):
            items = self.step_items(step)[self.rank::self.world]
            size = len(items) // self.split
            for chunk in range(self.split):
                yield items[chunk * size:(chunk + 1) * size]

    def step_items(self, step: int) -> list[tuple[int, int]]:
        """The whole global batch of ``step``, as (index, augmentation seed) pairs."""
        first = step * self.batch_size
        positions = range(first, first + self.batch_size)
        indices = self._balanced(step) if self.balanced else self._epoch_order(positions)
        return [(int(i), _mix_seed(self.seed, p)) for i, p in zip(indices, positions)]

    def _epoch_order(self, positions: range) -> list[int]:
        n = len(self.labels)
        out = []
        for p in positions:
            out.append(self._permutation(p // n)[p % n])
        return out

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm[0] != epoch:  # one epoch is cached: consecutive steps share it
            self._perm = (epoch, np.random.default_rng([self.seed, epoch]).permutation(len(self.labels)))
        return self._perm[1]

    def _balanced(self, step: int) -> list[int]:
        rng = np.random.default_rng([self.seed, 104729, step])
        classes = rng.integers(0, len(self._by_class), size=self.batch_size)
        if self._by_patient is None:
            return [self._by_class[c][rng.integers(0, len(self._by_class[c]))] for c in classes]
        out = []
        for c in classes:
            patient = self._by_patient[c][rng.integers(0, len(self._by_patient[c]))]
            out.append(patient[rng.integers(0, len(patient))])
        return out


def _mix_seed(seed: int, position: int) -> int:
    return int(np.random.default_rng([seed, 15485863, position]).integers(0, 2**62))


def collate(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*batch)
    return torch.stack(images), torch.tensor(labels, dtype=torch.long)


# Mixup --------------------------------------------------------------------------------

def mixup_lambda(alpha: float, seed: int, step: int) -> float:
    """BiT mixup: one lambda ~ Beta(alpha, alpha) per step (1.0, i.e. no mixing, for alpha 0)."""
    if alpha <= 0:
        return 1.0
    return float(np.random.default_rng([seed, 31337, step]).beta(alpha, alpha))


def mixup(images: torch.Tensor, targets: torch.Tensor, lam: float,
          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each item with a random partner of the batch: same lambda for pixels and labels.

    ``targets`` are one-hot (or soft) class distributions (N, C); returns mixed images and
    the matching mixed target distributions (cross-entropy against them equals
    lam * CE(y_i) + (1 - lam) * CE(y_j), the loss of Zhao et al. eq. 1-2).
    """
    perm = torch.randperm(images.shape[0], generator=generator).to(images.device)
    return (lam * images + (1 - lam) * images[perm],
            lam * targets + (1 - lam) * targets[perm])
