"""What `covidct synth` makes: its settings, importable without numpy or scipy (the
command's --help shows the defaults, and `covidct --help` must answer at once)."""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import CovidctError

FORMATS = ("dicom", "nifti", "covidx", "covidctnet")
#: Fewest slices a phantom may have: the lungs need room to taper at both ends.
MIN_SLICES = 8


@dataclass(frozen=True)
class CohortSettings:
    """What ``covidct synth`` makes; the defaults are the command's defaults."""

    patients: int = 30
    seed: int = 0
    difficulty: float = 0.3
    matrix: int = 512
    slice_mm: tuple[float, float] = (2.5, 5.0)
    max_slices: int | None = 120
    split: tuple[float, float, float] = (0.6, 0.2, 0.2)
    formats: tuple[str, ...] = FORMATS
    #: Harder anatomy (covidct.synth.anatomy.VARIANTS); each patient gets each listed variant
    #: with probability covidct.synth.cohort.VARIANT_SHARE. Empty (the default) leaves every cohort as it was.
    variants: tuple[str, ...] = ()

    def check(self) -> "CohortSettings":
        """Raise CovidctError on a setting that cannot work (the CLI makes it one line)."""
        if self.patients < 1:
            raise CovidctError(f"--patients must be at least 1, got {self.patients}")
        if not 0.0 <= self.difficulty <= 1.0:
            raise CovidctError(f"--difficulty must be between 0 and 1, got {self.difficulty}")
        if not 32 <= self.matrix <= 1024:
            raise CovidctError(f"--matrix must be between 32 and 1024, got {self.matrix}")
        lo, hi = self.slice_mm
        if not 0.3 <= lo <= hi <= 10.0:
            raise CovidctError(f"--slice-mm needs 0.3 <= MIN <= MAX <= 10, got {lo} {hi}")
        if self.max_slices is not None and self.max_slices < MIN_SLICES:
            raise CovidctError(f"--max-slices must be at least {MIN_SLICES}, got {self.max_slices}")
        if len(self.split) != 3 or any(f < 0 for f in self.split) or sum(self.split) <= 0:
            raise CovidctError(f"--split needs three non-negative fractions (train val test) "
                               f"with a positive sum, got {' '.join(map(str, self.split))}")
        if self.variants:
            # lazy: keeps scipy, numpy off the `covidct --help` path
            from .anatomy import VARIANTS  # numpy and scipy: only when variants are asked for

            odd = [v for v in self.variants if v not in VARIANTS]
            if odd:
                raise CovidctError(f"--variants: unknown {', '.join(odd)}; choose from {','.join(VARIANTS)}")
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown or not self.formats:
            raise CovidctError(f"--formats: unknown {', '.join(unknown) or '(none given)'}; "
                               f"choose from {','.join(FORMATS)}")
        return self
