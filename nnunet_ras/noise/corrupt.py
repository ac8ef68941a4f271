"""Label-noise simulator: writes a copy of an nnU-Net raw data set in which a seeded share of the training labels is
dilated or eroded (optionally also shifted), as in the noisy-label experiments of Pick-and-Learn (Zhu, Shi and Wu,
MICCAI 2019) and of Zhu H.'s thesis.

The conventions (CONVENTIONS below) are written into every manifest, so a data set documents itself.
"""
import math
import os
import shutil
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnunet_ras._io import declared_label_values, link_or_copy, read_image, write_json_atomically
from nnunet_ras.dataset_checks import DatasetError
from nnunet_ras.dataset_ids import claim_dataset
from nnunet_ras.noise import raw_folder

MANIFEST_NAME = 'corruption_manifest.json'
OPERATIONS = ('dilate', 'erode')
CONVENTIONS = """\
* radii are in voxels (pixels in 2D) whatever the spacing, drawn uniformly as integers from the inclusive range,
  once per corrupted case and label; dilation and erosion use the exact Euclidean distance transform, i.e. a
  Euclidean ball of that radius in voxel units. The image border is not background: a structure that touches it is
  not eroded from it (it goes on outside the field of view).
* each label is corrupted as a whole (a label with two components, e.g. both lungs, gets one operation and radius);
  every new mask is computed from the original map. Erosion frees voxels to background; dilation and shift only
  claim voxels that are background in the original map, never another label's (nor the ignore label's). A
  background voxel claimed by several labels goes to the label whose original structure is nearest (on a tie the
  lower label value).
* an erosion that would empty a label uses the largest radius that still keeps voxels; a label one voxel thin (no
  radius >= 1 keeps anything) is dilated by the drawn radius instead. Both are recorded as ``fallback``.
* shift (option): after dilation/erosion the structure is translated by a random integer vector whose length is a
  second radius drawn from the same range (random direction, rounded to voxels); what leaves the image is lost; a
  shift that would move the whole structure out of the image is not applied (recorded as ``fallback``).
"""


def _new_mask(mask: np.ndarray, operation: str, radius: int) -> Tuple[np.ndarray, str, int, Optional[str]]:
    """Returns the dilated/eroded mask with the operation and radius actually used, and the fallback taken if any."""
    if operation == 'erode':
        inside = ndimage.distance_transform_edt(mask)
        if (inside > radius).any():
            return inside > radius, 'erode', radius, None
        largest = math.ceil(float(inside.max())) - 1  # the largest integer r with some voxel deeper than r
        if largest >= 1:
            return inside > largest, 'erode', largest, f'erosion by {radius} would empty the label; radius reduced'
        operation, fallback = 'dilate', f'erosion by {radius} would empty the label (one voxel thin); dilated instead'
    else:
        fallback = None
    return ndimage.distance_transform_edt(~mask) <= radius, 'dilate', radius, fallback


def _shift_vector(rng: np.random.Generator, ndim: int, length: int) -> np.ndarray:
    """A random direction scaled to ``length`` voxels and rounded; never the zero vector for length >= 1."""
    direction = rng.normal(size=ndim)
    vector = np.rint(direction / np.linalg.norm(direction) * length).astype(int)
    if not vector.any():
        vector[int(np.argmax(np.abs(direction)))] = int(np.sign(direction[np.argmax(np.abs(direction))])) * length
    return vector


def corrupt_label_map(seg: np.ndarray, labels: Sequence[int], rng: np.random.Generator,
                      radius_range: Tuple[int, int], operations: Sequence[str] = OPERATIONS,
                      shift: bool = False) -> Tuple[np.ndarray, Dict[int, dict]]:
    """Corrupts the given label values of one label map; returns the new map and a record per label.

    The random draws (operation, radius, shift) are made for every label in a fixed order, present or not, so the
    draws of one label do not depend on whether another one is present.
    """
    lo, hi = radius_range
    out = seg.copy()
    background = seg == 0
    claim_distance = np.full(seg.shape, np.inf)
    records: Dict[int, dict] = {}
    for value in sorted(labels):
        operation = str(rng.choice(list(operations)))
        radius = int(rng.integers(lo, hi + 1))
        vector = _shift_vector(rng, seg.ndim, int(rng.integers(lo, hi + 1))) if shift else None
        mask = seg == value
        record = {'value': int(value), 'voxels_before': int(mask.sum())}
        records[value] = record
        if not record['voxels_before']:
            record.update(operation='none', fallback='label absent in this case', voxels_after=0)
            continue
        new, used_op, used_radius, fallback = _new_mask(mask, operation, radius)
        record.update(operation=used_op, requested_operation=operation, radius=used_radius,
                      requested_radius=radius, fallback=fallback)
        if vector is not None:
            shifted = ndimage.shift(new.astype(np.uint8), vector, order=0, mode='constant', cval=0) > 0
            if shifted.any():
                new = shifted
                record['shift'] = vector.tolist()
            else:
                record['shift'] = None
                record['fallback'] = ((fallback + '; ') if fallback else '') + \
                    f'shift {vector.tolist()} would move the label out of the image; not shifted'
        out[mask] = 0
        out[new & mask] = value
        claimed = new & background
        if claimed.any():
            distance = ndimage.distance_transform_edt(~mask)
            wins = claimed & (distance < claim_distance)
            out[wins] = value
            claim_distance[wins] = distance[wins]
    for value, record in records.items():
        if record['operation'] != 'none':
            record['voxels_after'] = int((out == value).sum())
    return out, records


def _label_values(dataset_json: dict, requested: Optional[Sequence[str]], json_path: str) -> Dict[str, int]:
    """Maps label names to the integer values to corrupt: all foreground labels, or those named/numbered."""
    values: Dict[str, int] = {}
    for name, value in dataset_json['labels'].items():
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            if int(v) != 0 and name != 'ignore':
                values.setdefault(name if not isinstance(value, (list, tuple)) else f'{name}:{v}', int(v))
    if not requested:
        return values
    chosen = {}
    for item in requested:
        hits = {n: v for n, v in values.items() if n == item or n.split(':')[0] == item or str(v) == item}
        if not hits:
            raise DatasetError(f"{json_path}: no foreground label {item!r} (labels: {values})")
        chosen.update(hits)
    return chosen


def _copy_tree(src: str, dst: str) -> None:
    os.makedirs(dst)
    for name in sorted(os.listdir(src)):
        if os.path.isfile(os.path.join(src, name)):
            link_or_copy(os.path.join(src, name), os.path.join(dst, name))


def _source_dataset(raw: str, source: str) -> Tuple[str, dict, str]:
    """Resolves id or name with nnU-Net's own lookup and loads dataset.json, naming the folder on failure."""
    from nnunet_ras.dataset_checks import load_dataset_json
    from nnunet_ras.dataset_ids import resolve_dataset
    folder = os.path.join(raw, resolve_dataset(source))
    if not os.path.isdir(folder):
        raise DatasetError(f"source data set folder {folder} does not exist")
    json_path = os.path.join(folder, 'dataset.json')
    return folder, load_dataset_json(json_path), json_path


def corrupt_dataset(source: str, new_id: int, new_name: str, fraction: float, radius_range: Tuple[int, int],
                    operations: Sequence[str] = OPERATIONS, shift: bool = False,
                    labels: Optional[Sequence[str]] = None, seed: int = 0, overwrite: bool = False) -> str:
    """Writes $nnUNet_raw/DatasetNNN_<new_name>, a copy of ``source`` with round(fraction * numTraining) training
    labels corrupted (rounded half up), and its corruption_manifest.json; returns the new folder."""
    lo, hi = radius_range
    if not 0 <= fraction <= 1:
        raise DatasetError(f"-fraction must be in [0, 1], got {fraction}")
    if not 1 <= lo <= hi:
        raise DatasetError(f"-radius must be two integers 1 <= MIN <= MAX, got {lo} {hi}")
    if not operations or any(op not in OPERATIONS for op in operations):
        raise DatasetError(f"-ops must be some of {OPERATIONS}, got {list(operations)}")
    raw = raw_folder()
    folder, dataset_json, json_path = _source_dataset(raw, source)
    values = _label_values(dataset_json, labels, json_path)
    declared = declared_label_values(dataset_json['labels'])
    ending = dataset_json['file_ending']
    labels_tr = os.path.join(folder, 'labelsTr')
    cases = sorted(f[:-len(ending)] for f in os.listdir(labels_tr) if f.endswith(ending)) \
        if os.path.isdir(labels_tr) else []
    if len(cases) != dataset_json['numTraining']:
        raise DatasetError(f"{json_path}: numTraining is {dataset_json['numTraining']} but {labels_tr} holds "
                           f"{len(cases)} '{ending}' label files")
    rng = np.random.default_rng(seed)
    n_corrupt = int(math.floor(fraction * len(cases) + 0.5))
    chosen = {cases[i] for i in rng.choice(len(cases), n_corrupt, replace=False)}
    manifest = {'source': os.path.basename(folder), 'fraction': fraction, 'radius_range': [lo, hi],
                'operations': list(operations), 'shift': shift, 'seed': seed, 'labels': values,
                'num_training': len(cases), 'num_corrupted': n_corrupt,
                'conventions': CONVENTIONS.splitlines(),
                'cases': {}}
    target = os.path.join(raw, f'Dataset{new_id:03d}_{new_name}')
    with claim_dataset(raw, new_id, new_name, overwrite) as claim:
        tmp = claim.work
        for sub in ('imagesTr', 'imagesTs', 'labelsTs'):
            if os.path.isdir(os.path.join(folder, sub)):
                _copy_tree(os.path.join(folder, sub), os.path.join(tmp, sub))
        os.makedirs(os.path.join(tmp, 'labelsTr'))
        for case in cases:
            src, dst = os.path.join(labels_tr, case + ending), os.path.join(tmp, 'labelsTr', case + ending)
            image, seg = read_image(src, 'label', labels=declared)  # a broken source label is refused, not copied
            if case not in chosen:
                shutil.copyfile(src, dst)  # a real copy: the corrupted data set's labels are its own
                manifest['cases'][case] = {'corrupted': False}
                continue
            new, records = corrupt_label_map(seg, list(values.values()), rng, (lo, hi), operations, shift)
            out = sitk.GetImageFromArray(new.astype(seg.dtype))
            out.CopyInformation(image)
            sitk.WriteImage(out, dst, useCompression=True)
            names = {v: n for n, v in values.items()}
            manifest['cases'][case] = {'corrupted': True, 'labels': {names[v]: r for v, r in records.items()}}
        new_json = dict(dataset_json, name=new_name,
                        label_noise=f"copy of {os.path.basename(folder)} with {n_corrupt} of {len(cases)} training "
                                    f"labels corrupted by nnunet-ras corrupt-labels (seed {seed}, radius {lo}-{hi}, "
                                    f"ops {'/'.join(operations)}{', shift' if shift else ''}); see {MANIFEST_NAME}; "
                                    f"test labels untouched")
        write_json_atomically(os.path.join(tmp, 'dataset.json'), new_json)
        write_json_atomically(os.path.join(tmp, MANIFEST_NAME), manifest)
    return target
