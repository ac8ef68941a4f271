"""Checks of an nnU-Net raw data set that name the case and the file at fault, run before planning."""
import os
from typing import List

import nibabel
import numpy as np
import SimpleITK as sitk
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets


class DatasetError(ValueError):
    """A raw data set that nnU-Net cannot plan; the message names the file and the problem."""


def _read_header(path: str) -> sitk.ImageFileReader:
    """Reads the geometry the way nnU-Net's SimpleITKIO does, and makes sure a NIfTI file's voxel data is complete.

    SimpleITK reads a truncated .nii.gz without complaint (the missing voxels come back as zeros), so the voxel
    data of NIfTI files is read to the end with nibabel, which does notice.
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
        if path.endswith(('.nii', '.nii.gz')):
            np.asanyarray(nibabel.load(path).dataobj)
    except (RuntimeError, OSError, EOFError, ValueError, nibabel.filebasedimages.ImageFileError) as e:
        reason = [line for line in str(e).strip().splitlines() if line.strip()]
        raise DatasetError(f"{path}: cannot be read as an image "
                           f"({reason[-1].strip() if reason else type(e).__name__})") from None
    return reader


def check_raw_dataset(raw_dataset_folder: str) -> List[str]:
    """Raises DatasetError on the first broken case; returns the case identifiers that passed.

    Checks that dataset.json is readable and has what nnU-Net needs, that every file reads to the end, and that
    every label has the size, spacing, origin and direction of its images.
    """
    json_path = os.path.join(raw_dataset_folder, 'dataset.json')
    try:
        dataset_json = load_json(json_path)
    except (OSError, ValueError) as e:
        raise DatasetError(f"{json_path}: not a readable JSON file ({e})") from None
    missing = [k for k in ('channel_names', 'labels', 'numTraining', 'file_ending') if k not in dataset_json]
    if missing:
        raise DatasetError(f"{json_path}: missing required key(s) {missing}")
    dataset = get_filenames_of_train_images_and_targets(raw_dataset_folder, dataset_json)
    if len(dataset) != dataset_json['numTraining']:
        raise DatasetError(f"{json_path}: numTraining is {dataset_json['numTraining']} but "
                           f"{len(dataset)} training cases were found")
    for case, files in dataset.items():
        for path in files['images'] + [files['label']]:
            if not os.path.isfile(path):
                raise DatasetError(f"case {case}: file {path} is missing")
        label = _read_header(files['label'])
        for image_path in files['images']:
            image = _read_header(image_path)
            problems = [name for name, a, b in (
                ('size', image.GetSize(), label.GetSize()),
                ('spacing', image.GetSpacing(), label.GetSpacing()),
                ('origin', image.GetOrigin(), label.GetOrigin()),
                ('direction', image.GetDirection(), label.GetDirection()))
                if len(a) != len(b) or not np.allclose(a, b, rtol=1e-4, atol=1e-4)]
            if problems:
                raise DatasetError(
                    f"case {case}: the label {files['label']} is on another grid than the image {image_path} "
                    f"({', '.join(problems)} differ: label size {label.GetSize()} spacing "
                    f"{tuple(round(s, 4) for s in label.GetSpacing())}, image size {image.GetSize()} spacing "
                    f"{tuple(round(s, 4) for s in image.GetSpacing())})")
    return list(dataset)
