"""JSRT/SCR chest radiographs -> one nnU-Net raw 2D data set per structure (the data of Zhu's noisy-label
experiment, after Pick-and-Learn, MICCAI 2019).

Lungs and heart overlap at their borders, so each structure is its own binary task. All structures share one
seeded train/test split: the thesis does not say which split it used, so the default is half/half.
"""
import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_ras._io import read_image, write_json_atomically
from nnunet_ras.dataset_checks import DatasetError
from nnunet_ras.dataset_ids import check_dataset_id_free, claim_dataset

STRUCTURES = {'lungs': 'JSRTLungs', 'heart': 'JSRTHeart', 'clavicles': 'JSRTClavicles'}  # id offsets 0, 1, 2


def split_cases(cases: Sequence[str], test_fraction: float, seed: int) -> Dict[str, List[str]]:
    """A seeded split of the sorted case list; round(test_fraction * n) test cases, rounded half up."""
    order = np.random.default_rng(seed).permutation(len(cases))
    n_test = int(math.floor(test_fraction * len(cases) + 0.5))
    ordered = sorted(cases)
    test = sorted(ordered[i] for i in order[:n_test])
    return {'train': sorted(set(ordered) - set(test)), 'test': test}


def _resized(image: sitk.Image, size: Optional[int], interpolator: int) -> sitk.Image:
    """Resamples to size x size with pixel centres of the old and new grid spanning the same extent."""
    if size is None or tuple(image.GetSize()) == (size, size):
        return image
    spacing = [image.GetSpacing()[d] * image.GetSize()[d] / size for d in range(2)]
    origin = [image.GetOrigin()[d] + 0.5 * (spacing[d] - image.GetSpacing()[d]) for d in range(2)]
    return sitk.Resample(image, [size, size], sitk.Transform(), interpolator, origin, spacing,
                         image.GetDirection(), 0, image.GetPixelID())


def _read(path: str) -> sitk.Image:
    image = read_image(path, 'image', ndim=(2,)).image
    if image.GetDimension() != 2 or image.GetNumberOfComponentsPerPixel() != 1 or \
            image.GetPixelID() != sitk.sitkUInt8:
        raise DatasetError(f"{path}: expected a 2D 8-bit grey-value PNG, got {image.GetDimension()}D "
                           f"{image.GetPixelIDTypeAsString()} with {image.GetNumberOfComponentsPerPixel()} channel(s)")
    return image


def _write(image: sitk.Image, path: str) -> None:
    """PNG carries no geometry; nnU-Net's NaturalImage2DIO assumes spacing 1, so the grid is reset to it."""
    image = sitk.Image(image)
    image.SetSpacing((1.0, 1.0))
    image.SetOrigin((0.0, 0.0))
    sitk.WriteImage(image, path)


def convert_jsrt(input_folder: str, raw: str, first_id: int, structures: Sequence[str] = tuple(STRUCTURES),
                 test_fraction: float = 0.5, seed: int = 0, size: Optional[int] = None) -> List[str]:
    """Writes Dataset<first_id + offset>_JSRT<Structure> for each structure (offsets: lungs 0, heart 1,
    clavicles 2, so a structure keeps its id whichever are converted); returns the new folders."""
    unknown = [s for s in structures if s not in STRUCTURES]
    if unknown:
        raise DatasetError(f"unknown structure(s) {unknown}; choose from {list(STRUCTURES)}")
    if not 0 < test_fraction < 1:
        raise DatasetError(f"-test_fraction must be in (0, 1), got {test_fraction}")
    image_folder = os.path.join(input_folder, 'images')
    if not os.path.isdir(image_folder):
        raise DatasetError(f"{image_folder} does not exist (expected JSRT images/<case>.png and masks/<structure>/)")
    cases = sorted(f[:-4] for f in os.listdir(image_folder) if f.endswith('.png'))
    if len(cases) < 2:
        raise DatasetError(f"{image_folder} holds {len(cases)} PNG image(s); need at least 2")
    split = split_cases(cases, test_fraction, seed)
    for structure in structures:
        check_dataset_id_free(raw, first_id + list(STRUCTURES).index(structure), STRUCTURES[structure])
    folders = []
    for structure in structures:
        dataset_id = first_id + list(STRUCTURES).index(structure)
        name = STRUCTURES[structure]
        with claim_dataset(raw, dataset_id, name) as claim:
            tmp = claim.work
            for part, suffix in (('train', 'Tr'), ('test', 'Ts')):
                os.makedirs(os.path.join(tmp, f'images{suffix}'))
                os.makedirs(os.path.join(tmp, f'labels{suffix}'))
                for case in split[part]:
                    image = _read(os.path.join(image_folder, case + '.png'))
                    mask = _read(os.path.join(input_folder, 'masks', structure, case + '.png'))
                    if image.GetSize() != mask.GetSize():
                        raise DatasetError(f"{os.path.join(input_folder, 'masks', structure, case + '.png')}: size "
                                           f"{mask.GetSize()} differs from its image's {image.GetSize()}")
                    label = sitk.Cast(sitk.BinaryThreshold(mask, 128, 255, 1, 0), sitk.sitkUInt8)
                    _write(_resized(image, size, sitk.sitkLinear), os.path.join(tmp, f'images{suffix}',
                                                                                f'{case}_0000.png'))
                    _write(_resized(label, size, sitk.sitkNearestNeighbor), os.path.join(tmp, f'labels{suffix}',
                                                                                         f'{case}.png'))
            dataset_json = {
                'channel_names': {'0': 'rescale_to_0_1'}, 'labels': {'background': 0, structure: 1},
                'numTraining': len(split['train']), 'file_ending': '.png', 'name': name,
                'description': f"JSRT/SCR chest radiographs, {structure} (binary), {size or 'original'} px; seeded "
                               f"split (seed {seed}, test fraction {test_fraction}): imagesTs/labelsTs are the "
                               f"{len(split['test'])} test cases, the same for every structure",
                'reference': 'JSRT database and SCR masks (van Ginneken et al. 2006); research and education use',
                'jsrt_split': split}
            write_json_atomically(os.path.join(tmp, 'dataset.json'), dataset_json)
        folders.append(os.path.join(raw, f'Dataset{dataset_id:03d}_{name}'))
    return folders
