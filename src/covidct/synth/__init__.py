"""SYNTHETIC chest-CT phantoms and cohorts (``covidct synth``).

:func:`make_patient` draws one phantom of a class (Normal, CP, NCP) in HU with a lesion
label mask; :func:`generate_cohort` writes a labelled cohort in the formats both methods
read (DICOM, NIfTI, COVIDx PNG slices with split files, CovidCTNet folders). Nothing made
here is a patient: every output says it is synthetic.
"""
from __future__ import annotations

from .findings import INFECTION, LESION_NAMES, Finding
from .patient import Patient, make_patient

__all__ = ["make_patient", "Patient", "Finding", "LESION_NAMES", "INFECTION", "generate_cohort"]


def __getattr__(name: str):
    if name in ("generate_cohort", "CohortSettings"):
        from . import cohort
        return getattr(cohort, name)
    raise AttributeError(f"module 'covidct.synth' has no attribute {name!r}")
