"""``nnunet-ras predict``: trained nnU-Net model folder(s) on a NIfTI or DICOM CT -> NIfTI, RTSTRUCT and DICOM SEG.

Prediction runs in-process through nnU-Net's own ``nnUNetPredictor``, so any trainer that nnU-Net can find (stock,
or a plugin trainer on ``nnUNet_extTrainer``) and any set of folds works. Several model folders are ensembled the
way ``nnUNetv2_ensemble`` does it: their class probabilities, each already on the input's grid, are averaged.
Structures grown with margins (CTV, PTV) are added as extra ROIs and all volumes are reported in cc.
"""
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_ras._io import (atomic_folder, check_output_folder, read_image, write_image_atomically,
                            write_json_atomically)
from nnunet_ras.dicom import DicomError
from nnunet_ras.dicom.margins import MarginSpec, apply_margins, check_margins, margin_warnings, volume_cc
from nnunet_ras.dicom.postprocess import Cleanup, clean_labels, find_postprocessing
from nnunet_ras.dicom.rtstruct import (DEFAULT_COLORS, RT_INTERPRETED_TYPES, Roi, check_identity, check_roi_labels,
                                       check_slice_references, structure_set_charset, write_rtstruct)
from nnunet_ras.dicom.seg import write_dicom_seg
from nnunet_ras.dicom.series import CtSeries, label_on_series_grid, read_ct_series

NIFTI_ENDINGS = ('.nii.gz', '.nii')

# progress(stage, fraction): stage is 'preprocessing', 'predicting' (fraction = sliding-window tiles done / all tiles of
# all folds and models) or 'exporting'. It may raise to abandon the case (the output folder is then left untouched).
Progress = Callable[[str, float], None]


def _ignore_progress(stage: str, fraction: float) -> None:
    pass


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


@dataclass
class ModelInfo:
    """What the checks before inference need to know of the model folder(s)."""
    labels: Dict[str, object]  # dataset.json 'labels'
    channel: str  # name of the single input channel ('CT' for CT models)
    ndim: Optional[int]  # 2 or 3 (patch size of the configuration); None when the configuration is unknown
    folds: List[str]  # the folds in use (of the first model folder when -f is not given)


def check_model_folders(model_folders: Sequence[str], folds: Optional[Sequence[str]], checkpoint: str) -> ModelInfo:
    """Fails before any prediction when a folder is no model, lacks a fold, takes several channels, or has another
    label set than the first; returns the labels, input channel and dimension of the models."""
    from nnunet_ras.dataset_checks import load_dataset_json
    if not model_folders:
        raise DicomError("no model folder given")
    labels, info = {}, None
    for folder in model_folders:
        for name in ('plans.json', 'dataset.json'):
            if not os.path.isfile(os.path.join(folder, name)):
                raise DicomError(f"{folder}: not a trained nnU-Net model folder ({name} missing)")
        folds_here = folds or [d[len('fold_'):] for d in sorted(os.listdir(folder)) if d.startswith('fold_')]
        missing = [f for f in folds_here if not os.path.isfile(os.path.join(folder, f'fold_{f}', checkpoint))]
        if missing or not folds_here:
            raise DicomError(f"{folder}: no {checkpoint} for fold(s) {', '.join(missing) or '(no fold folder)'}")
        dataset_json = load_dataset_json(os.path.join(folder, 'dataset.json'))
        if len(dataset_json['channel_names']) != 1:
            raise DicomError(f"{folder}: the model takes {len(dataset_json['channel_names'])} input channels; "
                             f"predict handles single-channel CT models")
        labels[folder] = dataset_json['labels']
        ndim = None
        try:
            with open(os.path.join(folder, 'plans.json')) as f:
                configurations = json.load(f)['configurations']
            configuration = os.path.basename(os.path.normpath(folder)).split('__')[-1]
            if configuration in configurations:
                patch_size = configurations[configuration].get('patch_size')
                inherited = configurations[configuration].get('inherits_from')
                if patch_size is None and inherited in configurations:
                    patch_size = configurations[inherited].get('patch_size')
                ndim = len(patch_size) if patch_size else None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DicomError(f"{os.path.join(folder, 'plans.json')}: not readable nnU-Net plans ({e})") from None
        info = info or ModelInfo(dataset_json['labels'], str(next(iter(dataset_json['channel_names'].values()))),
                                 ndim, list(folds_here))
    first = model_folders[0]
    for folder, folder_labels in labels.items():
        if folder_labels != labels[first]:
            raise DicomError(f"{folder}: its labels {folder_labels} differ from those of {first} ({labels[first]}); "
                             f"only models of one label set can be ensembled")
    return info


_check_model_folders = check_model_folders  # the former private name


def _safe(text: str) -> str:
    return re.sub(r'[^A-Za-z0-9_\-]+', '-', text).strip('-')


def case_name(input_path: str, series: Optional[CtSeries]) -> str:
    """The output files' case name: the NIfTI file's name, or for DICOM the patient ID and a digest of the series
    UID, so that two patients (or two series of one patient) never get the same name, whatever their folders."""
    if series is None:
        case = os.path.basename(input_path)
        case = case[:-len('.nii.gz')] if case.endswith('.nii.gz') else case[:-len('.nii')]
        return case[:-len('_0000')] if case.endswith('_0000') else case
    identity = series.series_uid or os.path.abspath(series.folder)
    return f"{_safe(series.patient_id) or 'anonymous'}_{hashlib.sha1(identity.encode()).hexdigest()[:8]}"


def check_input(input_path: str, series_uid: Optional[str], model: ModelInfo,
                 allow_missing_identity: bool) -> Tuple[Optional[CtSeries], List[str]]:
    """Reads and checks the input before inference: a verified NIfTI, or a DICOM CT series that an RTSTRUCT and SEG
    can be written for (grid, identity); refuses a non-CT model on a CT series and 2D input to a 3D model."""
    warnings: List[str] = []
    is_ct_model = model.channel.casefold() == 'ct'
    if os.path.isfile(input_path) and input_path.endswith(NIFTI_ENDINGS):
        read_image(input_path, 'image', ndim=(3,) if model.ndim == 3 else (2, 3))
        if not is_ct_model:
            warnings.append(f"the model's input channel is {model.channel!r}, not CT: make sure {input_path} is "
                            f"that modality")
        return None, warnings
    if not os.path.isdir(input_path):
        raise DicomError(f"{input_path}: neither a NIfTI file (.nii, .nii.gz) nor a folder of DICOM files")
    if not is_ct_model:
        raise DicomError(f"the model's input channel is {model.channel!r}, not CT; it cannot segment the CT series "
                         f"in {input_path}")
    series = read_ct_series(input_path, series_uid)
    check_slice_references(series)
    check_identity(series, allow_missing_identity)
    return series, list(series.warnings)


def _roi_names(style: RoiStyle, labels: Dict[str, object]) -> Dict[str, str]:
    """model label -> ROI name, after checking that --roi_names only names labels the model has."""
    unknown = set(style.names) - set(labels)
    if unknown:
        raise DicomError(f"--roi_names: the model has no label(s) {sorted(unknown)} (labels: "
                         f"{', '.join(k for k in labels if k != 'background')})")
    return {label: style.names.get(label, label) for label, value in labels.items()
            if label != 'background' and isinstance(value, int)}


def _tile_counting_predictor(on_tiles: Callable[[int], None], on_tile: Callable[[], None], bf16: bool = False):
    """nnU-Net's predictor class, extended to report its sliding-window tiles (nnU-Net itself only draws a tqdm bar):
    ``on_tiles(n)`` when a case is cut into n tiles (once per fold), ``on_tile()`` after each tile. With ``bf16`` the
    sliding window runs under CPU autocast to bfloat16 (one context, so the weights are cast once, not per tile); each
    tile's logits come back in float32, and nnU-Net accumulates them as it always does."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    class TileCountingPredictor(nnUNetPredictor):
        def _internal_get_sliding_window_slicers(self, image_size):
            slicers = super()._internal_get_sliding_window_slicers(image_size)
            on_tiles(len(slicers))
            return slicers

        def predict_sliding_window_return_logits(self, input_image):
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
                return super().predict_sliding_window_return_logits(input_image)

        def _internal_maybe_mirror_and_predict(self, x):
            prediction = super()._internal_maybe_mirror_and_predict(x)
            on_tile()
            return prediction.float() if bf16 else prediction

    return TileCountingPredictor


NATIVE_BF16_FLAGS = {'avx512_bf16', 'amx_bf16', 'bf16'}  # x86's AVX512-BF16 and AMX; Arm's BF16 extension


def native_bf16(cpuinfo: str = '/proc/cpuinfo') -> bool:
    """Whether this CPU computes in bfloat16 natively. oneDNN's own test (``torch.ops.mkldnn._is_mkldnn_bf16_supported``)
    also says yes on any AVX512 CPU, where it emulates bfloat16 by conversions: a RAS tile of a full-size CT took
    10 s there against 4.9 s in float32. So the CPU's flags decide (Linux's ``/proc/cpuinfo``: ``flags`` on x86,
    ``Features`` on Arm); where they cannot be read, oneDNN's test."""
    import torch
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        with open(cpuinfo) as f:
            lines = [line for line in f if line.startswith(('flags', 'Features'))]
    except OSError:
        lines = []
    if not lines:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return bool(NATIVE_BF16_FLAGS & set(lines[0].split(':', 1)[-1].split()))


def check_bf16(device: str) -> None:
    """bfloat16 is a CPU option (on a GPU nnU-Net already predicts in half precision), and only a speed-up where
    the CPU computes in bfloat16 natively (AVX512-BF16 or AMX); elsewhere oneDNN emulates it, slower than float32."""
    if device != 'cpu':
        raise DicomError(f"--bf16 is for prediction on the CPU (device {device!r}: nnU-Net already predicts in half "
                         f"precision on a GPU)")
    if not native_bf16():
        raise DicomError("--bf16: this CPU has no native bfloat16 arithmetic (AVX512-BF16 or AMX); bfloat16 would be "
                         "emulated and slower than float32")


def with_torch_resampling(configuration_manager):
    """The configuration with nnU-Net's torch resampling (``resample_torch_fornnunet``, that of its ``*_torchres``
    planners) for the export of the network's output to the input's grid, in place of the plans' (nnU-Net's default:
    scikit-image, linear in-plane, nearest across slices for anisotropic data). Only the export changes, never what
    the network is given, so a model trained on the plans' preprocessing sees the same input."""
    import torch
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
    kwargs = configuration_manager.configuration.get('resampling_fn_probabilities_kwargs', {})
    return ConfigurationManager({
        **configuration_manager.configuration, 'resampling_fn_probabilities': 'resample_torch_fornnunet',
        'resampling_fn_probabilities_kwargs': {'is_seg': False, 'force_separate_z': kwargs.get('force_separate_z'),
                                               'num_threads': torch.get_num_threads()}})


DEFAULT_STEP_SIZE = 0.5  # nnU-Net's: tiles overlap by half


def check_step_size(step_size: float) -> float:
    """The sliding window's step, as a fraction of the patch: more than 0 (tiles would not move), at most 1 (gaps
    between tiles would never be predicted)."""
    if not 0 < step_size <= 1:
        raise DicomError(f"step size {step_size:g}: must be more than 0 and at most 1 (a fraction of the patch; "
                         f"nnU-Net's default 0.5, 1 for tiles that do not overlap)")
    return step_size


def predict_probabilities(model_folders: Sequence[str], folds: Optional[Sequence[str]], checkpoint: str,
                          image_path: str, device: str, use_mirroring: bool, workdir: str,
                          progress: Progress = _ignore_progress,
                          step_size: float = DEFAULT_STEP_SIZE, bf16: bool = False,
                          torch_resampling: bool = False) -> Tuple[sitk.Image, dict]:
    """(label map on the input grid, dataset.json) from the mean of the models' probabilities (one model's label map
    comes straight from its logits, as ``nnUNetv2_predict`` makes it without ``--save_probabilities``).

    The model folders must have passed ``check_model_folders`` (and ``bf16`` ``check_bf16``, as ``predict_case``
    does before anything else); ``workdir`` takes the temporary label file.
    ``progress`` hears of preprocessing and of every sliding-window tile (see ``Progress``). ``step_size`` is the
    sliding window's step as a fraction of the patch (nnU-Net's ``-step_size``); ``bf16`` runs the network in
    bfloat16 on the CPU (see ``check_bf16``); ``torch_resampling`` exports with nnU-Net's torch resampling (see
    ``with_torch_resampling``).

    The plugin's trainers are added to ``nnUNet_extTrainer`` for the lookup, so its models need no extra setup.
    """
    import torch
    from nnunet_ras.installation import trainer_path

    search_path = [p for p in os.environ.get('nnUNet_extTrainer', '').split(os.pathsep) if p]
    if trainer_path() not in [os.path.abspath(p) for p in search_path]:
        os.environ['nnUNet_extTrainer'] = os.pathsep.join(search_path + [trainer_path()])

    tiles = {'done': 0, 'total': 0, 'passes': 0}  # passes: fold x model pairs still to cut into tiles

    def on_tiles(n: int) -> None:
        if tiles['total'] == 0:  # the first pass tells the number of tiles of every pass
            tiles['total'] = n * tiles['passes']
        progress('predicting', tiles['done'] / tiles['total'])

    def on_tile() -> None:
        tiles['done'] += 1
        progress('predicting', min(1.0, tiles['done'] / max(tiles['total'], 1)))

    predictor_class = _tile_counting_predictor(on_tiles, on_tile, bf16)
    mean, label_manager, dataset_json, properties, reader = None, None, None, None, None
    predictors = []
    for folder in model_folders:
        predictor = predictor_class(tile_step_size=step_size, use_mirroring=use_mirroring,
                                    device=torch.device(device), allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(folder, tuple(folds) if folds else None, checkpoint)
        if torch_resampling:
            predictor.configuration_manager = with_torch_resampling(predictor.configuration_manager)
        predictors.append(predictor)
    tiles['passes'] = sum(len(p.list_of_parameters) for p in predictors)
    for predictor in predictors:
        progress('preprocessing', 0.0)
        reader = predictor.plans_manager.image_reader_writer_class()
        data, properties = reader.read_images([image_path])
        label_manager, dataset_json = predictor.label_manager, predictor.dataset_json
        if len(predictors) == 1:  # no softmax and no probabilities on the input's grid
            segmentation = predictor.predict_single_npy_array(data, properties, None, None, False)
            progress('exporting', 0.0)
            break
        _, probabilities = predictor.predict_single_npy_array(data, properties, None, None, True)
        if mean is None:
            mean = np.zeros_like(probabilities)
        mean += probabilities / len(model_folders)
    else:
        progress('exporting', 0.0)
        segmentation = label_manager.convert_probabilities_to_segmentation(mean)
    # the plans' own writer restores the geometry; written uncompressed, since it is read back at once
    ending = dataset_json['file_ending']
    path = os.path.join(workdir, '.seg' + ('.nii' if ending == '.nii.gz' else ending))
    reader.write_seg(np.asarray(segmentation), path, properties)
    try:
        return read_image(path, 'label').image, dataset_json
    finally:
        os.remove(path)


def _on_grid(array: np.ndarray, grid: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(grid)
    return image


def predict_case(input_path: str, output_folder: str, model_folders: Sequence[str],
                 folds: Optional[Sequence[str]] = None, checkpoint: str = 'checkpoint_final.pth',
                 device: str = 'cpu', use_mirroring: bool = True, style: RoiStyle = RoiStyle(),
                 margins: Sequence[MarginSpec] = (), series_uid: Optional[str] = None,
                 allow_missing_identity: bool = False, cleanup: Cleanup = Cleanup(), overwrite: bool = False,
                 progress: Progress = _ignore_progress, report_extra: Optional[dict] = None,
                 step_size: float = DEFAULT_STEP_SIZE, bf16: bool = False, torch_resampling: bool = False) -> dict:
    """Predicts one case into ``output_folder``: ``<case>.nii.gz`` (model labels, after ``cleanup``), one NIfTI mask
    per margin structure, for DICOM input ``<case>_RTSTRUCT.dcm`` and ``<case>_SEG.dcm``, and ``<case>_report.json``
    (volumes, clean-up, files, warnings, and ``report_extra``).

    Everything that can be checked is checked before inference (models, input, identity, names, clean-up, margins,
    output folder). The output folder must be absent or empty unless ``overwrite`` (then it is replaced whole); the files
    are written into a hidden folder next to it, which is renamed onto it when complete. The DICOM CT's NIfTI copy
    for nnU-Net lives in that folder too, never in /tmp.
    """
    check_step_size(step_size)
    if bf16:
        check_bf16(device)
    model = check_model_folders(model_folders, folds, checkpoint)
    check_output_folder(output_folder, overwrite)
    series, warnings = check_input(input_path, series_uid, model, allow_missing_identity)
    label_rois = _roi_names(style, model.labels)
    values = {label_rois[label]: value for label, value in model.labels.items() if label in label_rois}
    cleanup.check_names(list(values))
    postprocessing_file = find_postprocessing(model_folders, model.folds, cleanup.postprocessing)
    _check_structures(values, style, margins, series)
    case = case_name(input_path, series)
    for warning in warnings:
        print(f"warning: {warning}")

    with atomic_folder(output_folder, overwrite) as work:
        if series is not None:
            nifti = os.path.join(work, f'.{case}_0000.nii')  # uncompressed: read back at once, then deleted
            sitk.WriteImage(series.image, nifti)
        else:
            nifti = input_path
        try:
            segmentation, _ = predict_probabilities(model_folders, folds, checkpoint, nifti, device,
                                                    use_mirroring, work, progress, step_size, bf16,
                                                    torch_resampling)
        finally:
            if series is not None and os.path.exists(nifti):
                os.remove(nifti)
        grid = series.image if series is not None else segmentation
        label_array = label_on_series_grid(segmentation, series) if series is not None else \
            sitk.GetArrayFromImage(segmentation)
        label_array, cleanup_report = clean_labels(label_array, values, grid.GetSpacing()[::-1], cleanup,
                                                   postprocessing_file)
        report = {'case': case, 'input': os.path.abspath(input_path),
                  'models': [os.path.abspath(m) for m in model_folders],
                  'folds': list(folds) if folds else 'all available', 'labels': values, 'cleanup': cleanup_report,
                  **(report_extra or {})}
        return _export(work, output_folder, report, label_array, grid, series, style, margins, warnings,
                       allow_missing_identity)


def _check_structures(values: Dict[str, int], style: RoiStyle, margins: Sequence[MarginSpec],
                      series: Optional[CtSeries]) -> None:
    """The margins grow from structures that exist, and every ROI name and type can be written."""
    check_margins(margins, list(values))
    names = list(values) + [m.name for m in margins]
    check_roi_labels([(name, style.interpreted_type(name)) for name in names],
                     structure_set_charset(series) if series is not None else None)


def _export(work: str, output_folder: str, report: dict, label_array: np.ndarray, grid: sitk.Image,
            series: Optional[CtSeries], style: RoiStyle, margins: Sequence[MarginSpec], warnings: List[str],
            allow_missing_identity: bool) -> dict:
    """Writes a case's files into ``work`` (the hidden folder that becomes ``output_folder``) from its label map:
    the label NIfTI, the margin structures, for DICOM input the RTSTRUCT and SEG, and the report (``report`` holds
    case, input, models, folds, labels (ROI name -> value) and clean-up; volumes, files and warnings are added)."""
    case, values = report['case'], report['labels']
    spacing_zyx = grid.GetSpacing()[::-1]
    masks = {name: label_array == value for name, value in values.items()}
    margin_masks = apply_margins(masks, spacing_zyx, margins)
    warnings = list(warnings) + margin_warnings(masks, margin_masks, margins)
    rois = [Roi(name, mask, style.interpreted_type(name), style.colors.get(name),
                description='nnU-Net prediction' if name in masks else
                next(m.describe() for m in margins if m.name == name))
            for name, mask in {**masks, **margin_masks}.items()]

    written = []

    def put(name: str) -> str:  # the path in the work folder; the final path is recorded
        written.append(os.path.join(output_folder, name))
        return os.path.join(work, name)

    write_image_atomically(_on_grid(label_array, grid), put(f'{case}.nii.gz'))
    for name, mask in margin_masks.items():
        write_image_atomically(_on_grid(mask, grid), put(f'{case}_{_safe(name)}.nii.gz'))
    if series is not None:
        warnings += write_rtstruct(series, rois, put(f'{case}_RTSTRUCT.dcm'), label='nnunet_ras',
                                   allow_missing_identity=allow_missing_identity)
        if any(roi.mask.any() for roi in rois):
            warnings += write_dicom_seg(series, rois, put(f'{case}_SEG.dcm'), allow_missing_identity)
        else:
            warnings.append('every structure is empty: no DICOM SEG written')
    report = {**report, 'margins': [m.describe() for m in margins], 'margin_specs': [_spec(m) for m in margins],
              'volumes_cc': {roi.name: round(volume_cc(roi.mask, spacing_zyx), 3) for roi in rois},
              'structures': [{'name': roi.name, 'type': roi.interpreted_type,
                              'color': list(roi.color or DEFAULT_COLORS.get(roi.interpreted_type, ())) or None,
                              'file': f'{case}.nii.gz' if roi.name in masks else f'{case}_{_safe(roi.name)}.nii.gz',
                              'value': values[roi.name] if roi.name in masks else 1} for roi in rois],
              'files': written, 'warnings': warnings}
    write_json_atomically(os.path.join(work, f'{case}_report.json'), report)
    return report


_EXPORTED = ('margins', 'margin_specs', 'volumes_cc', 'structures', 'files', 'warnings')  # what _export writes


def _spec(margin: MarginSpec) -> str:
    """The margin as ``parse_margin`` reads it back."""
    return f"{margin.name}={margin.source}+{','.join(f'{v:g}' for v in margin.margin_xyz)}" + \
        (f"@{margin.confine}" if margin.confine else '')


def remargin_case(output_folder: str, margins: Sequence[MarginSpec], style: RoiStyle = RoiStyle(),
                  series_uid: Optional[str] = None, allow_missing_identity: bool = False) -> dict:
    """Replaces the margin structures of a case that ``predict_case`` wrote into ``output_folder``, without running
    the network again: the label map is read back, the margins applied to it, and every file but the label map is
    written anew (RTSTRUCT and SEG from the DICOM series named in the report, which must still exist)."""
    reports = [n for n in os.listdir(output_folder) if n.endswith('_report.json')] \
        if os.path.isdir(output_folder) else []
    if len(reports) != 1:
        raise DicomError(f"{output_folder}: not the output folder of one predicted case (no single *_report.json)")
    with open(os.path.join(output_folder, reports[0])) as f:
        old = json.load(f)
    if 'labels' not in old:
        raise DicomError(f"{os.path.join(output_folder, reports[0])}: written by an older nnunet-ras; predict again")
    series = None
    if os.path.isdir(old['input']):
        series = read_ct_series(old['input'], series_uid)
    _check_structures(old['labels'], style, margins, series)
    labels = read_image(os.path.join(output_folder, f"{old['case']}.nii.gz"), 'label').image
    grid = series.image if series is not None else labels
    warnings = [w for w in old['warnings'] if not w.startswith('margin ')] + \
        [f"margins re-applied to the stored label map (was: {'; '.join(old['margins']) or 'none'})"]
    report = {key: value for key, value in old.items() if key not in _EXPORTED}
    with atomic_folder(output_folder, overwrite=True) as work:
        return _export(work, output_folder, report, sitk.GetArrayFromImage(labels), grid, series, style, margins,
                       warnings, allow_missing_identity)
