"""Independent readers of the DICOM files this package writes: the reference validator and a planning-grade rasteriser.

A file written for other software is only as good as those programs' reading of it, so conformance is checked with
tools nobody on this project wrote: ``dciodvfy`` from David Clunie's dicom3tools (the reference IOD validator) and
``plastimatch convert`` (Sharp et al., "Plastimatch: an open source software suite for radiotherapy image
processing", ICCR 2010), which rasterises an RTSTRUCT onto its CT the way a planning system does: pixel centres
inside the contour polygon, contours of a slice combined by union. Both come from Debian's packages
(``dicom3tools``, ``plastimatch``); the README's setup installs them.
"""
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List

import SimpleITK as sitk

from nnunet_ras.dicom import DicomError


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise DicomError(f"{name} is not installed: it comes with Debian's "
                         f"{'dicom3tools' if name == 'dciodvfy' else name} package (make install sets it up)")
    return path


@dataclass
class Validation:
    """dciodvfy's findings for one file: lines starting with ``Error`` and ``Warning``."""
    path: str
    errors: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)


def dciodvfy(path: str) -> Validation:
    """Runs dciodvfy on ``path`` (it checks the IOD the file's SOP class names) and collects its errors/warnings."""
    result = subprocess.run([_tool('dciodvfy'), '-new', path], capture_output=True, text=True, errors='replace')
    found = Validation(path)
    for line in (result.stdout + result.stderr).splitlines():
        if line.startswith('Error'):
            found.errors.append(line)
        elif line.startswith('Warning'):
            found.warnings.append(line)
    return found


def plastimatch_masks(rtstruct_path: str, ct_folder: str) -> Dict[str, sitk.Image]:
    """Every ROI of an RTSTRUCT as plastimatch rasterises it on the CT in ``ct_folder``, as images with plastimatch's
    geometry (resample them onto the series with ``series.label_on_series_grid``), keyed by ROI name."""
    with tempfile.TemporaryDirectory() as out:
        result = subprocess.run([_tool('plastimatch'), 'convert', '--input', rtstruct_path, '--referenced-ct',
                                 ct_folder, '--output-prefix', out, '--prefix-format', 'nrrd',
                                 '--output-ss-list', os.path.join(out, 'list.txt')],
                                capture_output=True, text=True, errors='replace')
        if result.returncode != 0:
            raise DicomError(f"{rtstruct_path}: plastimatch convert failed ({result.returncode}): "
                             f"{(result.stdout + result.stderr)[-2000:]}")
        names = []
        with open(os.path.join(out, 'list.txt')) as f:
            for line in f:  # "index|R G B|name"
                parts = line.rstrip('\n').split('|')
                if len(parts) >= 3:
                    names.append(parts[2])
        masks = {}
        for name in names:
            path = os.path.join(out, f'{name}.nrrd')
            if not os.path.isfile(path):
                raise DicomError(f"{rtstruct_path}: plastimatch wrote no mask for ROI {name!r}")
            masks[name] = sitk.ReadImage(path)
        return masks
