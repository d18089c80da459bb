"""covidct: COVID-19 detection in chest CT.

The public API is small on purpose::

    import covidct
    scan = covidct.load_scan("series_folder/")   # DICOM folder/file/zip, NIfTI, PNG/JPG/TIFF
    print(scan.summary())

Names are imported lazily so that ``import covidct`` (and ``covidct --help``) stay fast.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "Scan": ".scan",
    "load_scan": ".scanio",
    "save_scan": ".scanio",
    "load_model": ".models",
    "Prediction": ".prediction",
    "CovidctError": ".errors",
    "ScanError": ".errors",
    "DatasetError": ".errors",
    "ModelError": ".errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'covidct' has no attribute {name!r}")
