"""``nnunet-ras predict``: trained nnU-Net model folder(s) on a NIfTI or DICOM CT -> NIfTI, RTSTRUCT and DICOM SEG.

Prediction runs in-process through nnU-Net's own ``nnUNetPredictor``, so any trainer that nnU-Net can find (stock,
or a plugin trainer on ``nnUNet_extTrainer``) and any set of folds works. Several model folders are ensembled the
way ``nnUNetv2_ensemble`` does it: their class probabilities, each already on the input's grid, are averaged.
Structures grown with margins (CTV, PTV) are added as extra ROIs and all volumes are reported in cc.
"""
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_ras.dicom import DicomError
from nnunet_ras.dicom.margins import MarginSpec, apply_margins, volume_cc
from nnunet_ras.dicom.postprocess import Cleanup, clean_labels, find_postprocessing
from nnunet_ras.dicom.rtstruct import RT_INTERPRETED_TYPES, Roi, write_rtstruct
from nnunet_ras.dicom.seg import write_dicom_seg
from nnunet_ras.dicom.series import CtSeries, label_on_series_grid, read_ct_series

NIFTI_ENDINGS = ('.nii.gz', '.nii')


@dataclass
class RoiStyle:
    """How the predicted labels and margin structures are named, coloured and typed in the RTSTRUCT."""
    names: Dict[str, str] = field(default_factory=dict)  # model label name -> ROI name
    colors: Dict[str, Tuple[int, int, int]] = field(default_factory=dict)  # ROI name -> RGB
    types: Dict[str, str] = field(default_factory=dict)  # ROI name -> RTROIInterpretedType

    def interpreted_type(self, roi_name: str) -> str:
        """Explicit type, else GTV/CTV/PTV when the name starts with it, else ORGAN."""
        if roi_name in self.types:
            return self.types[roi_name]
        prefix = roi_name.strip().upper()[:3]
        return prefix if prefix in ('GTV', 'CTV', 'PTV') else 'ORGAN'


def parse_pairs(items: Sequence[str], what: str) -> Dict[str, str]:
    """``["a=b", ...]`` -> {a: b}."""
    pairs = {}
    for item in items or []:
        key, sep, value = item.partition('=')
        if not sep or not key.strip() or not value.strip():
            raise DicomError(f"{what} {item!r}: expected NAME=VALUE")
        pairs[key.strip()] = value.strip()
    return pairs


def parse_style(names: Sequence[str], colors: Sequence[str], types: Sequence[str]) -> RoiStyle:
    style = RoiStyle(names=parse_pairs(names, '--roi_names'), types=parse_pairs(types, '--roi_types'))
    for roi, text in parse_pairs(colors, '--roi_colors').items():
        try:
            rgb = tuple(int(v) for v in text.split(','))
        except ValueError:
            rgb = ()
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise DicomError(f"--roi_colors {roi}={text}: expected R,G,B with values 0-255")
        style.colors[roi] = rgb
    for roi, kind in style.types.items():
        if kind not in RT_INTERPRETED_TYPES:
            raise DicomError(f"--roi_types {roi}={kind}: not an RT ROI interpreted type ({', '.join(RT_INTERPRETED_TYPES)})")
    return style


def _load_input(input_path: str, series_uid: Optional[str], workdir: str) -> Tuple[str, str, Optional[CtSeries]]:
    """(case name, NIfTI path for nnU-Net, the DICOM series or None); DICOM is converted to NIfTI in ``workdir``."""
    if os.path.isfile(input_path) and input_path.endswith(NIFTI_ENDINGS):
        case = os.path.basename(input_path)
        case = case[:-len('.nii.gz')] if case.endswith('.nii.gz') else case[:-len('.nii')]
        return case[:-len('_0000')] if case.endswith('_0000') else case, input_path, None
    if not os.path.isdir(input_path):
        raise DicomError(f"{input_path}: neither a NIfTI file (.nii, .nii.gz) nor a folder of DICOM files")
    series = read_ct_series(input_path, series_uid)
    for warning in series.warnings:
        print(f"warning: {warning}")
    case = os.path.basename(os.path.normpath(input_path))
    nifti = os.path.join(workdir, f'{case}_0000.nii.gz')
    sitk.WriteImage(series.image, nifti, useCompression=True)
    return case, nifti, series


def _check_model_folders(model_folders: Sequence[str], folds: Optional[Sequence[str]], checkpoint: str) -> None:
    """Fails before any prediction when a folder is no model, lacks a fold, or has another label set."""
    labels = {}
    for folder in model_folders:
        for name in ('plans.json', 'dataset.json'):
            if not os.path.isfile(os.path.join(folder, name)):
                raise DicomError(f"{folder}: not a trained nnU-Net model folder ({name} missing)")
        missing = [f for f in (folds or []) if not os.path.isfile(os.path.join(folder, f'fold_{f}', checkpoint))]
        if missing:
            raise DicomError(f"{folder}: no {checkpoint} for fold(s) {', '.join(missing)}")
        with open(os.path.join(folder, 'dataset.json')) as f:
            dataset_json = json.load(f)
        if len(dataset_json['channel_names']) != 1:
            raise DicomError(f"{folder}: the model takes {len(dataset_json['channel_names'])} input channels; "
                             f"predict handles single-channel CT models")
        labels[folder] = dataset_json['labels']
    first = model_folders[0]
    for folder, folder_labels in labels.items():
        if folder_labels != labels[first]:
            raise DicomError(f"{folder}: its labels {folder_labels} differ from those of {first} ({labels[first]}); "
                             f"only models of one label set can be ensembled")


def predict_probabilities(model_folders: Sequence[str], folds: Optional[Sequence[str]], checkpoint: str,
                          image_path: str, device: str, use_mirroring: bool) -> Tuple[sitk.Image, dict]:
    """(label map on the input grid, dataset.json) from the mean of the models' probabilities.

    The plugin's trainers are added to ``nnUNet_extTrainer`` for the lookup, so its models need no extra setup.
    """
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunet_ras.installation import trainer_path

    search_path = [p for p in os.environ.get('nnUNet_extTrainer', '').split(os.pathsep) if p]
    if trainer_path() not in [os.path.abspath(p) for p in search_path]:
        os.environ['nnUNet_extTrainer'] = os.pathsep.join(search_path + [trainer_path()])

    _check_model_folders(model_folders, folds, checkpoint)
    mean, label_manager, dataset_json, properties, reader = None, None, None, None, None
    for folder in model_folders:
        predictor = nnUNetPredictor(use_mirroring=use_mirroring, device=torch.device(device), allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(folder, tuple(folds) if folds else None, checkpoint)
        reader = predictor.plans_manager.image_reader_writer_class()
        data, properties = reader.read_images([image_path])
        _, probabilities = predictor.predict_single_npy_array(data, properties, None, None, True)
        if mean is None:
            mean, label_manager, dataset_json = np.zeros_like(probabilities), predictor.label_manager, \
                predictor.dataset_json
        mean += probabilities / len(model_folders)
    segmentation = label_manager.convert_probabilities_to_segmentation(mean)
    with tempfile.TemporaryDirectory() as tmp:  # let the plans' own writer put the geometry back, then read it
        path = os.path.join(tmp, 'seg' + dataset_json['file_ending'])
        reader.write_seg(np.asarray(segmentation), path, properties)
        return sitk.ReadImage(path), dataset_json


def predict_case(input_path: str, output_folder: str, model_folders: Sequence[str],
                 folds: Optional[Sequence[str]] = None, checkpoint: str = 'checkpoint_final.pth',
                 device: str = 'cpu', use_mirroring: bool = True, style: RoiStyle = RoiStyle(),
                 margins: Sequence[MarginSpec] = (), series_uid: Optional[str] = None,
                 allow_missing_identity: bool = False, cleanup: Cleanup = Cleanup()) -> dict:
    """Predicts one case and writes ``<case>.nii.gz`` (model labels, after ``cleanup``), one NIfTI mask per margin
    structure, for DICOM input ``<case>_RTSTRUCT.dcm`` and ``<case>_SEG.dcm``, and ``<case>_report.json`` (volumes,
    clean-up, files, warnings). Names, models and the clean-up are checked before the network runs."""
    _check_model_folders(model_folders, folds, checkpoint)
    with open(os.path.join(model_folders[0], 'dataset.json')) as f:
        model_labels = json.load(f)['labels']
    unknown = set(style.names) - set(model_labels)
    if unknown:
        raise DicomError(f"--roi_names: the model has no label(s) {sorted(unknown)} (labels: "
                         f"{', '.join(k for k in model_labels if k != 'background')})")
    values = {style.names.get(label, label): value for label, value in model_labels.items()
              if label != 'background' and isinstance(value, int)}
    cleanup.check_names(list(values))
    postprocessing_file = find_postprocessing(model_folders, folds, cleanup.postprocessing)
    with tempfile.TemporaryDirectory() as workdir:
        case, nifti, series = _load_input(input_path, series_uid, workdir)
        segmentation, _ = predict_probabilities(model_folders, folds, checkpoint, nifti, device,
                                                           use_mirroring)
    grid = series.image if series is not None else segmentation
    label_array = label_on_series_grid(segmentation, series) if series is not None else \
        sitk.GetArrayFromImage(segmentation)
    spacing_zyx = grid.GetSpacing()[::-1]
    label_array, cleanup_report = clean_labels(label_array, values, spacing_zyx, cleanup, postprocessing_file)
    masks = {name: label_array == value for name, value in values.items()}
    margin_masks = apply_margins(masks, spacing_zyx, margins)
    rois = [Roi(name, mask, style.interpreted_type(name), style.colors.get(name),
                description='nnU-Net prediction' if name in masks else
                next(m.describe() for m in margins if m.name == name))
            for name, mask in {**masks, **margin_masks}.items()]

    os.makedirs(output_folder, exist_ok=True)
    written, warnings = [], []
    label_path = os.path.join(output_folder, f'{case}.nii.gz')
    label_image = sitk.GetImageFromArray(label_array.astype(np.uint8))
    label_image.CopyInformation(grid)
    _write_image(label_image, label_path)
    written.append(label_path)
    for name, mask in margin_masks.items():
        image = sitk.GetImageFromArray(mask.astype(np.uint8))
        image.CopyInformation(grid)
        written.append(_write_image(image, os.path.join(output_folder, f'{case}_{name}.nii.gz')))
    if series is not None:
        rtstruct_path = os.path.join(output_folder, f'{case}_RTSTRUCT.dcm')
        warnings += write_rtstruct(series, rois, rtstruct_path, label='nnunet_ras',
                                   allow_missing_identity=allow_missing_identity)
        seg_path = os.path.join(output_folder, f'{case}_SEG.dcm')
        if any(roi.mask.any() for roi in rois):
            warnings += write_dicom_seg(series, rois, seg_path, allow_missing_identity)
            written += [rtstruct_path, seg_path]
        else:
            warnings.append('every structure is empty: no DICOM SEG written')
            written.append(rtstruct_path)
    report = {'case': case, 'input': os.path.abspath(input_path), 'models': [os.path.abspath(m) for m in model_folders],
              'folds': list(folds) if folds else 'all available',
              'margins': [m.describe() for m in margins], 'cleanup': cleanup_report,
              'volumes_cc': {roi.name: round(volume_cc(roi.mask, spacing_zyx), 3) for roi in rois},
              'files': written, 'warnings': warnings}
    _write_text(json.dumps(report, indent=2), os.path.join(output_folder, f'{case}_report.json'))
    return report


def _write_image(image: sitk.Image, path: str) -> str:
    tmp = path[:-len('.nii.gz')] + '.part.nii.gz'
    sitk.WriteImage(image, tmp, useCompression=True)
    os.replace(tmp, path)
    return path


def _write_text(text: str, path: str) -> None:
    tmp = path + '.part'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)
