"""Clean-up of a predicted label map before its contours reach a planning system; every change is reported in cc.

Three optional steps, in this order, each on the label map (so the NIfTI, the RTSTRUCT, the SEG and the margins
grown from it all agree):

1. nnU-Net's own post-processing: the ``postprocessing.pkl`` that ``nnUNetv2_find_best_configuration`` chose by
   cross-validation (keep the largest component of a label or of the foreground where that raised Dice), applied
   with nnU-Net's ``apply_postprocessing``. The file is a pickle: it is loaded only from the model folder the user
   named, as nnU-Net itself does.
2. Minimum island volume per structure: 3D components (face, edge and corner neighbours) smaller than the volume
   are set to background, except the structure's largest component, which is always kept, so that a small target
   is never erased altogether.
3. Hole filling per structure, slice by slice (the plane the contours are drawn in): background enclosed by the
   structure alone within a slice becomes the structure; voxels of other structures, and pockets they enclose
   (background inside a tumour inside the liver), are left as they are.
"""
import os
import pickle
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from nnunet_ras.dicom import DicomError
from nnunet_ras.dicom.margins import volume_cc


@dataclass
class Cleanup:
    """What to do after prediction; structure names are the ROI names (after ``--roi_names``)."""
    postprocessing: str = 'auto'  # 'auto' (the model's postprocessing.pkl if it has one), 'none' or a file
    min_island_cc: Dict[str, float] = field(default_factory=dict)
    fill_holes: Sequence[str] = ()

    def check_names(self, names: Sequence[str]) -> None:
        unknown = (set(self.min_island_cc) | set(self.fill_holes)) - set(names)
        if unknown:
            raise DicomError(f"--min_island_cc / --fill_holes name structure(s) {sorted(unknown)} that the model "
                             f"does not predict (structures: {', '.join(names)})")


def parse_min_island(pairs: Dict[str, str]) -> Dict[str, float]:
    """{ROI: 'CC'} (from ``predict.parse_pairs``) -> {ROI: cc}, each a volume >= 0."""
    volumes = {}
    for name, value in pairs.items():
        try:
            volumes[name] = float(value)
        except ValueError:
            volumes[name] = -1.0
        if not volumes[name] >= 0:
            raise DicomError(f"--min_island_cc {name}={value}: expected a volume >= 0 in cc")
    return volumes


def find_postprocessing(model_folders: Sequence[str], folds: Sequence[str], choice: str) -> Optional[str]:
    """The postprocessing.pkl to apply: ``choice`` if it is a file, none for 'none'; for 'auto' the one a single
    model folder holds (directly, or in ``crossval_results_folds_<folds>`` for ``folds``, the folds in use)."""
    if choice == 'none':
        return None
    if choice != 'auto':
        if not os.path.isfile(choice):
            raise DicomError(f"--postprocessing {choice}: no such file (give a postprocessing.pkl, 'auto' or 'none')")
        return choice
    if len(model_folders) != 1:
        return None  # an ensemble's post-processing lives in its own folder: name it explicitly
    folder = model_folders[0]
    for candidate in (os.path.join(folder, 'postprocessing.pkl'),
                      os.path.join(folder, f"crossval_results_folds_{'_'.join(sorted(folds))}", 'postprocessing.pkl')):
        if os.path.isfile(candidate):
            return candidate
    return None


def _nnunet_postprocessing(labels: np.ndarray, path: str) -> np.ndarray:
    from nnunetv2.postprocessing.remove_connected_components import apply_postprocessing
    try:
        with open(path, 'rb') as f:
            functions, kwargs = pickle.load(f)
    except (OSError, pickle.UnpicklingError, ValueError, TypeError, EOFError, AttributeError) as e:
        raise DicomError(f"{path}: not an nnU-Net postprocessing.pkl ({e})") from None
    return apply_postprocessing(labels, functions, kwargs)


def _remove_islands(mask: np.ndarray, spacing_zyx, min_cc: float) -> Tuple[np.ndarray, int]:
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if count <= 1:
        return mask, 0
    sizes = np.bincount(components.ravel())[1:]
    voxel_cc = float(np.prod(spacing_zyx)) / 1000.0
    keep = sizes * voxel_cc >= min_cc
    keep[int(np.argmax(sizes))] = True
    return np.concatenate([[False], keep])[components], int(np.count_nonzero(~keep))


def _holes_per_slice(labels: np.ndarray, value: int) -> np.ndarray:
    """Background enclosed by ``value`` alone, slice by slice: the 4-connected background regions that do not touch
    the slice's border and whose neighbours all carry ``value`` (a pocket inside a tumour inside the liver is the
    tumour's hole, not the liver's)."""
    holes = np.zeros(labels.shape, dtype=bool)
    for k, plane in enumerate(labels):
        regions, count = ndimage.label(plane == 0)
        if count == 0:
            continue
        enclosed = np.ones(count + 1, dtype=bool)
        enclosed[0] = False
        enclosed[np.unique(np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]]))] = False
        for axis in (0, 1):  # a region next to a voxel of another structure is not this structure's hole
            r, v = np.moveaxis(regions, axis, 0), np.moveaxis(plane, axis, 0)
            for region, neighbour in ((r[:-1], v[1:]), (r[1:], v[:-1])):
                enclosed[np.unique(region[(neighbour != 0) & (neighbour != value)])] = False
        holes[k] = enclosed[regions]
    return holes


def clean_labels(labels: np.ndarray, values: Dict[str, int], spacing_zyx, cleanup: Cleanup,
                 postprocessing_file: Optional[str]) -> Tuple[np.ndarray, List[dict]]:
    """Applies ``cleanup`` to a label map (z, y, x) whose structures are ``values`` (ROI name -> label);
    returns the new map and one report entry per step and structure that changed something."""
    report = []
    if postprocessing_file:
        before = labels
        labels = _nnunet_postprocessing(labels, postprocessing_file)
        for name, value in values.items():
            removed = (before == value) & (labels != value)
            report.append({'step': 'nnU-Net postprocessing', 'file': os.path.abspath(postprocessing_file),
                           'structure': name, 'removed_cc': round(volume_cc(removed, spacing_zyx), 3)})
    labels = labels.copy()
    for name, min_cc in cleanup.min_island_cc.items():
        mask = labels == values[name]
        kept, islands = _remove_islands(mask, spacing_zyx, min_cc)
        labels[mask & ~kept] = 0
        report.append({'step': f'islands under {min_cc:g} cc removed', 'structure': name, 'islands': islands,
                       'removed_cc': round(volume_cc(mask & ~kept, spacing_zyx), 3)})
    for name in cleanup.fill_holes:
        added = _holes_per_slice(labels, values[name])
        labels[added] = values[name]
        report.append({'step': 'holes filled (per slice)', 'structure': name,
                       'added_cc': round(volume_cc(added, spacing_zyx), 3)})
    return labels, report
