"""Checks of an nnU-Net raw data set that name the case and the file at fault, run before planning."""
import json
import os
from typing import List

import numpy as np
from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

from nnunet_ras._io import declared_label_values, read_image
from nnunet_ras.errors import DatasetError  # noqa: F401 (its historical home)


def load_dataset_json(json_path: str) -> dict:
    """Reads an nnU-Net dataset.json and checks what every command relies on: the keys and their types, label
    values that are integers with background 0. DatasetError names the file and the key."""
    try:
        with open(json_path) as f:
            dataset_json = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"{json_path}: file is missing") from None
    except (OSError, ValueError) as e:
        raise DatasetError(f"{json_path}: not a readable JSON file ({e})") from None
    if not isinstance(dataset_json, dict):
        raise DatasetError(f"{json_path}: not a JSON object")
    missing = [k for k in ('channel_names', 'labels', 'numTraining', 'file_ending') if k not in dataset_json]
    if missing:
        raise DatasetError(f"{json_path}: missing required key(s) {missing}")
    channels, labels = dataset_json['channel_names'], dataset_json['labels']
    if not isinstance(channels, dict) or not channels:
        raise DatasetError(f"{json_path}: 'channel_names' must be a non-empty object such as {{\"0\": \"CT\"}}")
    if not isinstance(labels, dict) or not labels:
        raise DatasetError(f"{json_path}: 'labels' must be a non-empty object such as {{\"background\": 0, ...}}")
    for name, value in labels.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise DatasetError(f"{json_path}: label {name!r} has value {value!r}; label values are integers >= 0 "
                               f"(or lists of them for regions)")
    if labels.get('background') != 0:
        raise DatasetError(f"{json_path}: 'labels' must map 'background' to 0")
    if not isinstance(dataset_json['numTraining'], int) or isinstance(dataset_json['numTraining'], bool) or \
            dataset_json['numTraining'] < 0:
        raise DatasetError(f"{json_path}: 'numTraining' must be a whole number, got "
                           f"{dataset_json['numTraining']!r}")
    if not isinstance(dataset_json['file_ending'], str) or not dataset_json['file_ending'].startswith('.'):
        raise DatasetError(f"{json_path}: 'file_ending' must be a string such as \".nii.gz\", got "
                           f"{dataset_json['file_ending']!r}")
    return dataset_json


def check_raw_dataset(raw_dataset_folder: str) -> List[str]:
    """Raises DatasetError on the first broken case; returns the case identifiers that passed.

    Checks that dataset.json is readable and has what nnU-Net needs, that every image and label reads completely
    (package reader: no truncation, NaN, 4D images, fractional or undeclared label values), and that every label has
    the size, spacing, origin and direction of its images.
    """
    if not os.path.isdir(raw_dataset_folder):
        raise DatasetError(f"{raw_dataset_folder}: data set folder does not exist")
    json_path = os.path.join(raw_dataset_folder, 'dataset.json')
    dataset_json = load_dataset_json(json_path)
    if not os.path.isdir(os.path.join(raw_dataset_folder, 'imagesTr')) and 'dataset' not in dataset_json:
        raise DatasetError(f"{os.path.join(raw_dataset_folder, 'imagesTr')}: folder is missing")
    try:
        dataset = get_filenames_of_train_images_and_targets(raw_dataset_folder, dataset_json)
    except (OSError, KeyError, ValueError) as e:
        raise DatasetError(f"{raw_dataset_folder}: the training cases cannot be listed ({e})") from None
    if not dataset:
        raise DatasetError(f"{os.path.join(raw_dataset_folder, 'imagesTr')}: no training images ending in "
                           f"_0000{dataset_json['file_ending']}")
    if len(dataset) != dataset_json['numTraining']:
        raise DatasetError(f"{json_path}: numTraining is {dataset_json['numTraining']} but "
                           f"{len(dataset)} training cases were found")
    declared = declared_label_values(dataset_json['labels'])
    for case, files in dataset.items():
        for path in files['images'] + [files['label']]:
            if not os.path.isfile(path):
                raise DatasetError(f"case {case}: file {path} is missing")
        label = read_image(files['label'], 'label', labels=declared).image
        for image_path in files['images']:
            image = read_image(image_path, 'image').image
            problems = [name for name, a, b in (
                ('dimension', (image.GetDimension(),), (label.GetDimension(),)),
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
