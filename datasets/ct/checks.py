"""Does a volume look like a non-contrast head CT? Checks run before a head-CT model is trusted on it.

:func:`head_ct_check` measures the body in world millimetres (its extent left-right, anterior-posterior
and head-foot), the scanner's in-plane field of view, and the HU histogram of the body (holes such as
lungs filled slice by slice): the fractions of air/lung (< -500 HU), fat (-200..-30), brain-like soft
tissue (15..60) and bone (> 300). A head is 120-200 mm wide and 140-240 mm long, has a skull (bone
is 8-40 % of the body) and almost no lung or fat. Each violated bound gives one sentence naming the
measure, its value and the expected range; :func:`blood_volume_check` flags a predicted hemorrhage
volume no patient series would show.

Bounds (choices; the literature gives typical head sizes, not cut-offs): width 100-220 mm, length
120-260 mm, field of view <= 350 mm, air inside the body <= 15 %, fat <= 20 %, bone >= 4 %,
brain-like >= 20 %, predicted blood <= 150 mL.
"""

from __future__ import annotations

import numpy as np

__all__ = ["HEAD_BOUNDS", "head_ct_check", "blood_volume_check"]

HEAD_BOUNDS = {"width_mm": (100.0, 220.0), "length_mm": (120.0, 260.0), "fov_mm": (0.0, 350.0), "air_fraction": (0.0, 0.15),
               "fat_fraction": (0.0, 0.20), "bone_fraction": (0.04, 1.0), "brain_fraction": (0.20, 1.0)}
MAX_BLOOD_ML = 150.0

_WHAT = {"width_mm": "body width (left-right)", "length_mm": "body length (anterior-posterior)", "fov_mm": "in-plane field of view",
         "air_fraction": "air/lung (< -500 HU) inside the body", "fat_fraction": "fat (-200..-30 HU) in the body",
         "bone_fraction": "bone (> 300 HU) in the body", "brain_fraction": "brain-like tissue (15..60 HU) in the body"}


def _body(hu: np.ndarray, axial_axis: int) -> np.ndarray:
    """Largest connected region above -500 HU, holes filled slice by slice along the head-foot axis."""
    from scipy import ndimage

    dense = hu > -500
    lab, n = ndimage.label(dense)
    if n == 0:
        return dense
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    body = lab == int(np.argmax(sizes))
    moved = np.moveaxis(body, axial_axis, 0)
    filled = np.stack([ndimage.binary_fill_holes(s) for s in moved])
    return np.moveaxis(filled, 0, axial_axis)


def head_ct_check(hu: np.ndarray, affine: np.ndarray) -> dict:
    """``{"looks_like_head_ct": bool, "reasons": [sentences], "measures": {...}}`` for a CT volume in HU on ``affine``."""
    from nibabel.orientations import io_orientation

    hu = np.asarray(hu)
    aff = np.asarray(affine, float)
    ornt = io_orientation(aff)
    to_world = {int(ornt[k, 0]): k for k in range(3)}  # world axis (R, A, S) -> array axis
    spacing = np.linalg.norm(aff[:3, :3], axis=0)
    body = _body(hu, to_world[2])
    measures: dict = {}
    if body.any():
        idx = np.argwhere(body)
        lo, hi = idx.min(0), idx.max(0)
        extent = (hi - lo + 1) * spacing  # along array axes
        measures["width_mm"] = float(extent[to_world[0]])
        measures["length_mm"] = float(extent[to_world[1]])
        measures["height_mm"] = float(extent[to_world[2]])
        vals = hu[body]
        measures["air_fraction"] = float((vals < -500).mean())
        measures["fat_fraction"] = float(((vals >= -200) & (vals <= -30)).mean())
        measures["bone_fraction"] = float((vals > 300).mean())
        measures["brain_fraction"] = float(((vals >= 15) & (vals <= 60)).mean())
    measures["fov_mm"] = float(max(hu.shape[to_world[0]] * spacing[to_world[0]], hu.shape[to_world[1]] * spacing[to_world[1]]))
    reasons = []
    if not body.any():
        reasons.append("no body found (nothing above -500 HU): is this a CT in Hounsfield units?")
    for key, (lo_b, hi_b) in HEAD_BOUNDS.items():
        v = measures.get(key)
        if v is None or lo_b <= v <= hi_b:
            continue
        pct = key.endswith("fraction")
        shown = f"{100 * v:.0f} %" if pct else f"{v:.0f} mm"
        unit, scale = (" %", 100.0) if pct else (" mm", 1.0)
        if lo_b <= 0:
            want = f"at most {scale * hi_b:.0f}{unit}"
        elif pct and hi_b >= 1:
            want = f"at least {scale * lo_b:.0f}{unit}"
        else:
            want = f"{scale * lo_b:.0f}-{scale * hi_b:.0f}{unit}"
        reasons.append(f"{_WHAT[key]} is {shown}, a head CT has {want}")
    return {"looks_like_head_ct": not reasons, "reasons": reasons, "measures": {k: round(v, 4) for k, v in measures.items()}}


def blood_volume_check(blood_ml: float, max_ml: float = MAX_BLOOD_ML) -> list[str]:
    """One sentence when the predicted hemorrhage volume is implausible (> ``max_ml`` mL), else nothing."""
    if blood_ml > max_ml:
        return [f"predicted hemorrhage volume {blood_ml:.0f} mL is implausible (> {max_ml:.0f} mL; the largest survivable "
                "intracranial bleeds are about 100-150 mL): the input is probably not what the model was trained on"]
    return []
