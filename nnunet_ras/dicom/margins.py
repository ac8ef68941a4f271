"""GTV -> CTV -> PTV margins in millimetres, in physical space on anisotropic grids.

A margin (mx, my, mz) grows a structure by an ellipsoid with those semi-axes: a voxel joins when some voxel of the
structure lies within the ellipsoid around it. That is a Euclidean distance transform with each axis' spacing divided
by its margin, thresholded at 1; an isotropic margin m is the plain distance <= m mm. Dilating with a voxel
structuring element instead would give a 5 mm margin of 6 voxels in-plane but 2 slices (6 mm) between slices.

Margins are along the image axes (x: along a row, y: down the columns, z: across slices), which are the patient's
axes on a non-oblique CT. A margin confined to a structure (the CTV to the liver, the PTV to the body) is cut by it,
but never below the structure it grew from: the CTV always contains the GTV.
"""
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy.ndimage import distance_transform_edt

from nnunet_ras.dicom import DicomError

MAX_MARGIN_MM = 50.0  # clinical CTV/PTV margins are a few mm to about 2 cm; more is almost surely a typo (cm, x10)
SPEC_PATTERN = re.compile(r'^\s*([^=+@]+?)\s*=\s*([^=+@]+?)\s*\+\s*([0-9.,\s]+?)\s*(?:@\s*([^=+@]+?)\s*)?$')


@dataclass
class MarginSpec:
    """``name = source + margin [@ confine]``, margin in mm along (x, y, z)."""
    name: str
    source: str
    margin_xyz: Tuple[float, float, float]
    confine: Optional[str] = None

    def describe(self) -> str:
        margin = f"{self.margin_xyz[0]:g} mm" if len(set(self.margin_xyz)) == 1 else \
            ' x '.join(f"{m:g}" for m in self.margin_xyz) + ' mm (x, y, z)'
        return f"{self.name} = {self.source} + {margin}" + (f" within {self.confine}" if self.confine else '')


def parse_margin(text: str) -> MarginSpec:
    """Parses ``CTV=GTV+5``, ``PTV=CTV+5,5,7`` (x, y, z in mm) or ``CTV=GTV+10@Liver``."""
    match = SPEC_PATTERN.match(text)
    if not match:
        raise DicomError(f"margin {text!r}: expected NEW=SOURCE+MM or NEW=SOURCE+MX,MY,MZ, optionally @CONFINE "
                         f"(e.g. CTV=GTV+5@Liver, PTV=CTV+5,5,7)")
    name, source, margin, confine = match.groups()
    try:
        values = [float(v) for v in margin.split(',')]
    except ValueError:
        raise DicomError(f"margin {text!r}: {margin!r} is not a number of mm") from None
    if len(values) not in (1, 3) or any(not np.isfinite(v) or v < 0 for v in values):
        raise DicomError(f"margin {text!r}: give one margin or three (x, y, z), all >= 0 mm")
    if any(v > MAX_MARGIN_MM for v in values):
        raise DicomError(f"margin {text!r}: {max(values):g} mm is more than {MAX_MARGIN_MM:g} mm; margins are in mm "
                         f"(not cm)")
    return MarginSpec(name, source, tuple(values * 3 if len(values) == 1 else values), confine)


def expand(mask: np.ndarray, spacing_zyx: Sequence[float], margin_xyz: Sequence[float]) -> np.ndarray:
    """``mask`` (z, y, x) grown by the margin (mm along x, y, z) in physical space; see the module docstring."""
    mask = mask.astype(bool)
    margin_zyx = np.asarray(margin_xyz, dtype=float)[::-1]
    if not mask.any() or not margin_zyx.any():
        return mask.copy()
    spacing = np.asarray(spacing_zyx, dtype=float)
    # work on the bounding box plus the margin: the distance transform of a whole CT costs seconds
    reach = np.ceil(margin_zyx / spacing).astype(int) + 1
    occupied = np.argwhere(mask)
    lower = np.maximum(occupied.min(0) - reach, 0)
    upper = np.minimum(occupied.max(0) + reach + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lower, upper))
    # an axis without margin gets a spacing so large that no step along it stays within reach
    scaled = np.where(margin_zyx > 0, spacing / np.where(margin_zyx > 0, margin_zyx, 1), 1e9)
    distance = distance_transform_edt(~mask[box], sampling=scaled)
    grown = np.zeros_like(mask)
    grown[box] = distance <= 1 + 1e-6  # voxels exactly one margin away belong to it
    return grown


def check_margins(specs: Sequence[MarginSpec], structures: Sequence[str]) -> None:
    """The name checks of ``apply_margins``, done before anything is computed: every source and confining structure
    exists (or is made by an earlier spec) and no new name is taken."""
    available = list(structures)
    for spec in specs:
        for needed in (spec.source, spec.confine):
            if needed is not None and needed not in available:
                raise DicomError(f"margin {spec.describe()}: no structure named {needed!r} "
                                 f"(structures: {', '.join(available)})")
        if spec.name in available:
            raise DicomError(f"margin {spec.describe()}: a structure named {spec.name!r} exists already")
        available.append(spec.name)


def margin_warnings(masks: Dict[str, np.ndarray], made: Dict[str, np.ndarray],
                    specs: Sequence[MarginSpec]) -> List[str]:
    """Warnings for grown structures that reach the image border where their source does not: the margin runs
    beyond the image and the structure is cut there."""
    available = {**masks, **made}
    warnings = []
    for spec in specs:
        grown, source = available[spec.name], available[spec.source]
        faces = [(axis, side) for axis in range(grown.ndim) for side in (0, -1)
                 if np.take(grown, side, axis=axis).any() and not np.take(source, side, axis=axis).any()]
        if faces:
            warnings.append(f"margin {spec.describe()}: the grown structure reaches the image border "
                            f"({len(faces)} face(s)); it is cut there, the margin is incomplete")
    return warnings


def apply_margins(masks: Dict[str, np.ndarray], spacing_zyx: Sequence[float],
                  specs: Sequence[MarginSpec]) -> Dict[str, np.ndarray]:
    """The new structures, in order; a spec may grow from a structure made by an earlier one (PTV from CTV)."""
    check_margins(specs, list(masks))
    available = dict(masks)
    made = {}
    for spec in specs:
        source = available[spec.source].astype(bool)
        grown = expand(source, spacing_zyx, spec.margin_xyz)
        if spec.confine is not None:
            grown = (grown & available[spec.confine].astype(bool)) | source
        made[spec.name] = available[spec.name] = grown
    return made


def volume_cc(mask: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    """Volume in cubic centimetres (voxel count x voxel volume)."""
    return float(np.count_nonzero(mask) * np.prod(spacing_zyx) / 1000.0)
