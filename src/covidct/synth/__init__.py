"""SYNTHETIC chest-CT phantoms and cohorts (``covidct synth``).

:func:`make_patient` draws one phantom of a class (Normal, CP, NCP) in HU with a lesion
label mask; :func:`generate_cohort` writes a labelled cohort in the formats both methods
read (DICOM, NIfTI, COVIDx PNG slices with split files, CovidCTNet folders). Nothing made
here is a patient: every output says it is synthetic.
"""
from __future__ import annotations

import importlib

# Imported on first use, so that covidct.synth.settings (the CLI's defaults) needs no scipy.
_LAZY = {"make_patient": ".patient", "Patient": ".patient", "Finding": ".findings",
         "LESION_NAMES": ".findings", "INFECTION": ".findings", "generate_cohort": ".cohort",
         "CohortSettings": ".settings"}
__all__ = ["make_patient", "Patient", "Finding", "LESION_NAMES", "INFECTION", "generate_cohort"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'covidct.synth' has no attribute {name!r}")
