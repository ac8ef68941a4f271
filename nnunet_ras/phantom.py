"""Synthetic anisotropic abdominal CT phantoms with a liver and tumours, in nnU-Net's raw layout.

The demo and the tests need a CT-like data set that ships with nothing: each case is an abdomen-like body (fat,
muscle, spine) with a liver-like organ holding one or two hypodense tumours, at about 0.8 x 0.8 x 3 mm. Labels:
0 background, 1 liver, 2 tumour.
"""
import os
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import gaussian_filter

from nnunet_ras._io import write_image_atomically, write_json_atomically

LABELS = {'background': 0, 'liver': 1, 'tumour': 2}


@dataclass
class PhantomGeometry:
    shape_zyx: Tuple[int, int, int] = (24, 72, 72)
    spacing_zyx: Tuple[float, float, float] = (3.0, 0.8, 0.8)


def _ellipsoid(grid, centre, radii):
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1


def make_case(rng: np.random.Generator, geometry: PhantomGeometry = PhantomGeometry()):
    """Returns (image in HU as int16, label as uint8), both (z, y, x)."""
    grid = np.meshgrid(*[np.arange(n) * s for n, s in zip(geometry.shape_zyx, geometry.spacing_zyx)],
                       indexing='ij')
    extent = np.array(geometry.shape_zyx) * np.array(geometry.spacing_zyx)
    centre = extent / 2
    image = np.full(geometry.shape_zyx, -1000., dtype=np.float32)  # air

    # anatomy in mm for a 77 mm wide field of view, scaled to this one's width (liver and tumours z-extent too)
    scale = extent[2] / 76.8
    body_radii = (extent[0] * 4, extent[1] * 0.45, extent[2] * 0.47)
    image[_ellipsoid(grid, centre, body_radii)] = -100.  # subcutaneous fat
    fat = 6 * scale
    image[_ellipsoid(grid, centre, (body_radii[0], body_radii[1] - fat, body_radii[2] - fat))] = 40.  # soft tissue
    spine_centre = (centre[0], centre[1] + extent[1] * 0.3, centre[2])
    image[_ellipsoid(grid, spine_centre, (extent[0] * 4, 7. * scale, 7. * scale))] = 500.  # vertebral body

    liver_centre = centre + np.array([rng.uniform(-8, 8), rng.uniform(-8, 4), rng.uniform(-20, -12)]) * scale
    liver_radii = np.array([rng.uniform(30, 40), rng.uniform(20, 26), rng.uniform(17, 22)]) * scale
    liver = _ellipsoid(grid, liver_centre, liver_radii)
    image[liver] = 100.
    label = liver.astype(np.uint8)

    for _ in range(rng.integers(1, 3)):
        radius = rng.uniform(9, 14) * scale
        # keep the tumour inside the liver: centre within the liver ellipsoid shrunk by the radius
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        offset = direction * rng.uniform(0, 0.5) * np.maximum(liver_radii - radius, 1)
        tumour = _ellipsoid(grid, liver_centre + offset, (radius * rng.uniform(0.8, 1.2), radius, radius)) & liver
        image[tumour] = rng.uniform(10, 30)
        label[tumour] = 2

    # partial-volume blur (sharper in-plane than between slices) and scanner noise
    image = gaussian_filter(image, sigma=(0.5, 1.0, 1.0)) + rng.normal(0, 12, size=image.shape)
    return np.round(image).astype(np.int16), label


def _write(array: np.ndarray, spacing_zyx, path: str) -> None:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(tuple(float(s) for s in spacing_zyx[::-1]))
    write_image_atomically(img, path)  # never leave a half-written case behind


def write_phantom_dataset(raw_folder: str, dataset_id: int = 501, name: str = 'LiverPhantom',
                          num_train: int = 16, num_test: int = 4, seed: int = 0,
                          geometry: PhantomGeometry = PhantomGeometry()) -> str:
    """Writes DatasetXXX_<name> (imagesTr, labelsTr, imagesTs, labelsTs, dataset.json); returns its folder.

    The id is claimed like every other new data set (``dataset_ids.claim_dataset``): refused when another data set
    uses it; an earlier phantom of the same name is replaced whole once the new one is complete.
    """
    from nnunet_ras.dataset_ids import claim_dataset
    os.makedirs(raw_folder, exist_ok=True)
    with claim_dataset(raw_folder, dataset_id, name, replace=True) as claim:
        folder = claim.work
        for sub in ('imagesTr', 'labelsTr', 'imagesTs', 'labelsTs'):
            os.makedirs(os.path.join(folder, sub), exist_ok=True)
        rng = np.random.default_rng(seed)
        for i in range(num_train + num_test):
            split = 'Tr' if i < num_train else 'Ts'
            case = f'phantom_{i:03d}'
            image, label = make_case(rng, geometry)
            _write(image, geometry.spacing_zyx, os.path.join(folder, f'images{split}', f'{case}_0000.nii.gz'))
            _write(label, geometry.spacing_zyx, os.path.join(folder, f'labels{split}', f'{case}.nii.gz'))
        dataset_json = {'channel_names': {'0': 'CT'}, 'labels': LABELS, 'numTraining': num_train,
                        'file_ending': '.nii.gz', 'name': name,
                        'description': 'synthetic anisotropic abdominal CT phantom (nnunet_ras)'}
        write_json_atomically(os.path.join(folder, 'dataset.json'), dataset_json)
    return claim.target
