"""The slice classifier's training settings, with the paper's defaults, written once.

Torch-free, so that ``covidct train-bit --help`` shows these defaults without importing the
training code (as :mod:`covidct.covidctnet.settings` does for CovidCTNet).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import CovidctError
from .schedule import DEFAULT_RESOLUTION, DEFAULT_SCHEDULE, RESOLUTIONS, SCHEDULES

DEFAULT_ARCH = "resnetv2_50x1_bit"
#: A 4-block BiT-layout ResNet-v2 (GroupNorm + weight standardisation, bottleneck units
#: named as in BiT) of 0.5 M parameters: not in the paper; for tests and quick CPU demos.
TINY_ARCH = "resnetv2_tiny_bit"
#: What a slice classifier crops its slices to: "box", the body box it is given (the split
#: file's, or the automatic one of a scan); "lungs", the aerated lungs' box inside it
#: (covidct.windowing.lung_box), where lesions get about 1.4x the pixels at the same input size.
CROP_RULES = ("box", "lungs")
#: Windows a slice classifier may re-read its COVIDx pictures in (``rewindow``; defined in
#: covidct.windowing): narrower than the COVIDx window, on the lung's own range.
REWINDOWS = ("lung-detail", "lung-detail-wide")


def check_crop_rule(rule: str, path=None, error: type[CovidctError] = CovidctError) -> str:
    """``rule`` if it is one of :data:`CROP_RULES`; else ``error`` (naming ``path``, if given)."""
    return _known("crop rule", rule, CROP_RULES, path, error)


def check_rewindow(window: str | None, path=None, error: type[CovidctError] = CovidctError) -> str | None:
    """``window`` if it is None or one of :data:`REWINDOWS`; else ``error``. Any other window
    (the mediastinum's, say) reaches beyond the COVIDx picture's range, whose 8 bits cannot
    give it back: a model would train on clipped pixels without a word."""
    return None if window is None else _known("re-window", window, REWINDOWS, path, error)


def _known(what: str, value: str, known: tuple[str, ...], path, error: type[CovidctError]) -> str:
    if value not in known:
        raise error(f"unknown {what} {value!r}; known: {', '.join(known)}", path)
    return value


@dataclass
class TrainConfig:
    """Settings of a fine-tuning run; the defaults are Zhao et al.'s main setting."""

    train_split: str
    images: str
    out: str
    val_split: str | None = None
    val_images: str | None = None           # default: the training images folder
    arch: str = DEFAULT_ARCH
    init: str = "bit-m"                     # the paper's best initialisation (ImageNet-21k)
    resize: int = RESOLUTIONS[DEFAULT_RESOLUTION][0]
    crop: int = RESOLUTIONS[DEFAULT_RESOLUTION][1]
    rewindow: str | None = None             # read the COVIDx pictures in this window (the paper: as given)
    crop_rule: str = "box"                  # "lungs": the lungs' box inside the body box (the paper: body)
    schedule: tuple[int, ...] = SCHEDULES[DEFAULT_SCHEDULE]
    batch_size: int = 64
    batch_split: int = 1                    # micro-batches per step (gradient accumulation)
    lr: float = 0.003
    momentum: float = 0.9
    mixup_alpha: float = 0.1                # 0 disables mixup
    balanced: bool = False                  # class-balanced sampling (the paper did not)
    balance_patients: bool = False          # with balanced: patients of a class drawn equally
    jitter: bool = False                    # scale, turn, contrast jitter too (the paper: crop, flip)
    workers: int = 4
    val_every: int = 100
    max_val: int | None = None              # validate on a fixed random subset of this size
    max_train_per_class: int | None = None  # the paper's data-size experiment (Fig. 8)
    seed: int = 0
    device: str = "auto"
    amp: bool = False                       # bf16 autocast on CUDA
    channels_last: bool = False
    resume: bool = False
    stop_after: int | None = None           # stop (as if killed) after this many steps
    synthetic: bool | None = None           # None: detect from the data folder's README
    progress: bool = True
    command: str = ""

    def __post_init__(self) -> None:
        self.schedule = tuple(int(s) for s in self.schedule)
        if self.batch_size < 1 or self.batch_split < 1 or self.val_every < 1:
            raise CovidctError("batch size, batch split and --val-every must be positive")
        check_rewindow(self.rewindow)  # an unknown name fails here, not after data loading
        check_crop_rule(self.crop_rule)
        if self.balance_patients and not self.balanced:
            raise CovidctError("--balance-patients balances the patients within each class of "
                               "--balanced sampling; give both")

    @property
    def total_steps(self) -> int:
        return self.schedule[-1]
