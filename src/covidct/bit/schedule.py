"""BiT-HyperRule: step-based learning-rate schedule and the paper's resolution presets.

A schedule is a tuple of step boundaries ``(warmup, decay1, decay2, decay3, total)``:
linear warm-up from 0 to the base learning rate over the first ``warmup`` steps, then the
rate is divided by 10 after each decay boundary, and training stops at ``total``. This is
``bit_hyperrule.get_lr`` of the BiT reference code, which Zhao et al. used.
"""
from __future__ import annotations

from ..errors import CovidctError

#: The four schedules of Zhao et al. (Fig. 6B), named by their total number of steps.
SCHEDULES: dict[str, tuple[int, ...]] = {
    "bit-500": (100, 200, 300, 400, 500),
    "bit-5000": (500, 1500, 3000, 4500, 5000),
    "bit-10000": (500, 3000, 6000, 9000, 10000),
    "bit-20000": (500, 6000, 12000, 18000, 20000),
}
#: The paper's main setting ("We used 10,000 training steps in our experiments").
DEFAULT_SCHEDULE = "bit-10000"

#: (resize, crop) pairs of the paper (Fig. 6A), named by the crop size used for evaluation.
RESOLUTIONS: dict[str, tuple[int, int]] = {
    "128": (160, 128),
    "224": (256, 224),
    "384": (448, 384),
    "480": (512, 480),
}
#: The paper's main setting: resize to 512, random crop 480 (train); resize to 480 (test).
DEFAULT_RESOLUTION = "480"


def parse_schedule(text: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    """A preset name (``bit-10000``) or an explicit comma list of increasing boundaries."""
    if isinstance(text, (tuple, list)):
        steps = tuple(int(s) for s in text)
    elif text in SCHEDULES:
        steps = SCHEDULES[text]
    else:
        try:
            steps = tuple(int(s) for s in str(text).split(",") if s.strip())
        except ValueError:
            raise CovidctError(f"schedule {text!r} is neither a preset ({', '.join(SCHEDULES)}) "
                               "nor a comma list of step numbers") from None
    if len(steps) < 2 or steps[0] < 0 or any(b <= a for a, b in zip(steps, steps[1:])):
        raise CovidctError(f"schedule {text!r} must list at least a warm-up and a final step, "
                           "in increasing order")
    return steps


def parse_resolution(text: str | int | tuple[int, int]) -> tuple[int, int]:
    """``"480"`` (a paper preset, by crop size), ``"160,128"`` (resize,crop) or a plain size.

    A plain size that is not a preset means resize = crop (no random-crop augmentation).
    """
    if isinstance(text, tuple):
        resize, crop = (int(v) for v in text)
    elif str(text) in RESOLUTIONS:
        resize, crop = RESOLUTIONS[str(text)]
    else:
        try:
            values = [int(v) for v in str(text).split(",")]
        except ValueError:
            values = []
        if len(values) not in (1, 2):
            raise CovidctError(f"resolution {text!r}: give a crop size ({', '.join(RESOLUTIONS)}) "
                               "or 'resize,crop'")
        resize, crop = (values[0], values[-1])
    if crop < 16 or resize < crop:
        raise CovidctError(f"resolution {text!r}: need resize >= crop >= 16")
    return resize, crop


def learning_rate(step: int, boundaries: tuple[int, ...], base_lr: float = 0.003) -> float | None:
    """The learning rate of update number ``step`` (0-based), or None once training is over.

    Exactly the BiT reference rule: ``base * step / warmup`` during warm-up, then one
    factor of 10 less for every decay boundary that ``step`` has passed (strictly).
    """
    warmup, *decays, total = boundaries
    if step >= total:
        return None
    if step < warmup:
        return base_lr * step / warmup
    return base_lr / 10 ** sum(1 for b in decays if b < step)
