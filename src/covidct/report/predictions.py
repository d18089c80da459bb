"""The Example predictions section: each prediction's call, probabilities, scan geometry, lungs
and pictures."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .common import method_title
from .discover import Findings
from .guide import HOW
from .html import esc, figure, img, key_values, missing, section, table


def predictions_section(found: Findings) -> str:
    if not found.predictions:
        return section("predictions", "Example predictions",
                       missing("No example predictions found", "<method>.json from covidct predict --out"))
    parts = []
    for pred in found.predictions:
        content = pred.content
        method = content.get("method", "")
        probabilities = content.get("probabilities") or {}
        scan = content.get("scan") or {}
        badge = ' <span class="badge syn">SYNTHETIC</span>' if pred.synthetic else ""
        parts.append(f"<h3>{esc(method_title(method))}: <code>{esc(found.relative(pred.path.parent))}</code>{badge}</h3>")
        parts.append(table(["Class", "Probability"],
                           [[k, f"{100 * float(v):.1f}%"] for k, v in probabilities.items()
                            if isinstance(v, (int, float))],
                           caption=f"Call: {content.get('label', 'n/a')}", css="figures"))
        parts.append(key_values([
            ("How the call was made", content.get("aggregation")),
            ("Scan", _scan_text(scan)),
            ("Time", f"{sum(v for v in (content.get('timings_s') or {}).values() if isinstance(v, (int, float)) and not isinstance(v, bool)):.1f} s"
             if content.get("timings_s") else None),
        ]))
        parts.append(_prediction_lungs(content.get("lungs") or {}))
        for picture in pred.pictures[:6]:
            parts.append(figure(img(picture.read_bytes(), "image/png", picture.stem, css="picture"),
                                _picture_title(picture.stem, method),
                                HOW["infection"] if "infection" in picture.stem else ""))
    shown: set[Path] = set()
    for pred in found.predictions:  # one lung picture per prediction folder
        picture = pred.path.parent / "lungs.png"
        if picture.is_file() and picture not in shown:
            shown.add(picture)
            parts.append(figure(img(picture.read_bytes(), "image/png", "lung mask", css="picture"),
                                f"Lung mask used by both methods ({found.relative(pred.path.parent)})",
                                "Right lung outlined in cyan, left in yellow (covidct.lungs, HU rule)."))
    return section("predictions", "Example predictions", "".join(parts))


def _prediction_lungs(lungs: Mapping[str, Any]) -> str:
    """The lung volumes and involvement of a prediction (a research measurement)."""
    found = lungs.get("involvement")
    if not isinstance(found, Mapping):
        return ""
    volumes = found.get("lung_volume_ml") or {}
    zones = ", ".join(f"{z.get('zone')} {z.get('score')}" for z in found.get("zones") or [])
    return key_values([
        ("Lung volume (right / left)", f"{volumes.get('right')} / {volumes.get('left')} mL"),
        ("Lung with infection-like density (research measurement)",
         f"{found.get('involved_percent')}% ({found.get('involved_ml')} mL; ground glass "
         f"{found.get('ground_glass_percent')}%, consolidation {found.get('consolidation_percent')}%)"),
        ("Lung under the CovidCTNet infection map", (f"{found['map_share_percent']}% (map > "
                                                     f"{found.get('map_threshold')})")
         if "map_share_percent" in found else None),
        ("Zone scores (0-4 each; total 0-24)", f"{zones}; total {found.get('severity_score')}"),
    ])


PICTURE_TITLES = {"infection-slices": "Infection map on the most affected slices",
                  "infection-mip": "Infection map: maximum-intensity projections"}


def _picture_title(stem: str, method: str) -> str:
    key = stem[len(method):].strip("-_ ") if stem.startswith(method) else stem
    return PICTURE_TITLES.get(key, key.replace("-", " ").replace("_", " ").capitalize() or stem)


def _scan_text(scan: Mapping[str, Any]) -> str | None:
    shape, spacing = scan.get("shape"), scan.get("spacing_mm")
    if not shape:
        return None
    text = " x ".join(map(str, shape)) + " voxels"
    if spacing:
        text += ", spacing " + " x ".join(f"{float(s):.2f}" for s in spacing) + " mm"
    if scan.get("units"):
        text += f", {scan['units']}"
    return text
