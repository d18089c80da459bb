"""`covidct info SCAN`: what covidct sees in a scan (size, geometry, safe metadata, body box)."""
from __future__ import annotations

import argparse
import json

from ..errors import ScanError
from ..privacy import source_label


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "info", help="describe a scan: size, geometry, de-identified metadata, body crop box",
        description="Load a scan the way every covidct method does and describe it: voxel grid, "
                    "spacing, orientation, units (HU or windowed picture), de-identified metadata, "
                    "warnings about the files, and the automatic body crop box of the middle "
                    "slice. Patient name, ID and dates are never printed.")
    parser.add_argument("scan", metavar="SCAN",
                        help="a DICOM folder, DICOM file or .zip of a series, a NIfTI file "
                             "(.nii, .nii.gz), or a picture (.png/.jpg/.tif) or folder of pictures")
    parser.add_argument("--series", metavar="UID", default=None,
                        help="for a folder holding several DICOM series: the series to read, by "
                             "SeriesInstanceUID or by the 12-character hash covidct prints "
                             "(default: the CT series with most slices)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of text")
    parser.set_defaults(func=run)


def describe(scan) -> dict:
    """The facts `covidct info` prints, as plain JSON-ready values."""
    import numpy as np

    # lazy: keeps scipy, numpy off the `covidct --help` path
    from ..windowing import body_box

    middle = scan.n_slices // 2
    box = None
    voxels = scan.voxels
    value_range = [float(np.nanmin(voxels)), float(np.nanmax(voxels))] \
        if np.isfinite(voxels).any() else [float("nan"), float("nan")]
    checks = _checks(scan)
    if scan.orientation in ("axial", "unknown"):
        box = list(body_box(scan.voxels[middle], units=scan.units))
    return {
        "source": source_label(scan.source),
        "summary": scan.summary(),
        "shape": list(scan.shape),
        "units": scan.units,
        "spacing_mm": list(scan.spacing),
        "origin_mm": list(scan.origin),
        "direction": [[round(float(v), 6) for v in row] for row in scan.direction],
        "orientation": scan.orientation,
        "geometry_known": scan.geometry_known,
        "value_range": value_range,
        "checks": checks,
        "metadata": scan.metadata,
        "body_box_middle_slice": {"slice": middle, "xmin_ymin_xmax_ymax": box},
    }


def _checks(scan) -> str:
    """What covidct.checks says of the scan (prediction refuses what fails)."""
    # lazy: keeps scipy, numpy off the `covidct --help` path
    from ..checks import MIN_LUNG_MM, check_scan

    try:
        result = check_scan(scan)
    except ScanError as exc:
        return f"refused for prediction: {exc.message}"
    lungs = result.lung_indices
    enough = "enough" if result.lung_extent_mm >= MIN_LUNG_MM else "too little"
    return (f"passed: {lungs.size} lung slice(s) ({lungs[0]}-{lungs[-1]}), "
            f"{result.lung_extent_mm:.0f} mm of lung along z ({enough} for CovidCTNet)")


def run(args: argparse.Namespace) -> int:
    # lazy: keeps numpy off the `covidct --help` path
    from ..scanio import load_scan

    facts = describe(load_scan(args.scan, series_uid=args.series))
    if args.json:
        print(json.dumps(facts, indent=2, default=str))
    else:
        print(_as_text(facts))
    return 0


def _as_text(facts: dict) -> str:
    box = facts["body_box_middle_slice"]
    corners = box["xmin_ymin_xmax_ymax"]
    rows = [
        ("source", facts["source"]),
        ("units", facts["units"] + ("" if facts["geometry_known"] else " (geometry unknown)")),
        ("origin (mm)", _numbers(facts["origin_mm"])),
        ("direction", "; ".join(_numbers(row) for row in facts["direction"])),
        ("values", _numbers(facts["value_range"])),
        ("checks", facts["checks"]),
        ("body box", f"slice {box['slice']}: x {corners[0]}-{corners[2]}, "
                     f"y {corners[1]}-{corners[3]}"
         if corners else f"n/a ({facts['orientation']} slices)"),
    ]
    rows += [(key, value) for key, value in facts["metadata"].items()
             if key != "warnings" and value is not None]
    rows += [("warning", w) for w in facts["metadata"].get("warnings", [])]
    return "\n".join([facts["summary"], *(f"{label + ':':<15}{value}" for label, value in rows)])


def _numbers(values) -> str:
    return " ".join(f"{float(v):.4g}" for v in values)
