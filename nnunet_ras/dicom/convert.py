"""``dicom-to-dataset``: a folder of patients (CT series + RTSTRUCT) -> an nnU-Net raw data set.

Each sub-folder of the input is one patient. The user maps ROI names to labels, several spellings per label
(``gtv=GTV,gtv_1``; matched ignoring case and surrounding spaces); labels are numbered in the order given and a later
label is painted over an earlier one, so list enclosing structures first (liver, then GTV). A patient is converted
only when every label is found exactly once; otherwise it is skipped with the reason, and nothing of it is written.
The per-patient report (found, missing, ambiguous and unmapped ROIs, warnings) goes to the terminal and to
``dicom_conversion_report.json`` in the data set folder.
"""
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_ras.dicom import DicomError
from nnunet_ras.dicom.rtstruct import read_rtstruct, referenced_series_uids
from nnunet_ras.dicom.series import DicomFolder, load_series, scan_folder

REPORT_NAME = 'dicom_conversion_report.json'


@dataclass
class PatientReport:
    patient: str
    status: str = 'skipped'  # or 'converted'
    reason: str = ''
    found: Dict[str, str] = field(default_factory=dict)  # label -> ROI name
    missing: List[str] = field(default_factory=list)  # labels
    ambiguous: Dict[str, List[str]] = field(default_factory=dict)  # label -> ROI names
    unmapped: List[str] = field(default_factory=list)  # ROI names no label asked for
    volumes_cc: Dict[str, float] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)

    def line(self) -> str:
        details = [f"found {', '.join(f'{k}={v!r}' for k, v in self.found.items())}" if self.found else '',
                   f"missing {', '.join(self.missing)}" if self.missing else '',
                   '; '.join(f"ambiguous {k}: {', '.join(map(repr, v))}" for k, v in self.ambiguous.items()),
                   f"unmapped {', '.join(map(repr, self.unmapped))}" if self.unmapped else '']
        text = f"{self.status:9s} {self.patient}: " + '; '.join(d for d in details if d)
        return text + (f"\n          reason: {self.reason}" if self.reason else '')


def parse_label_map(items: Sequence[str]) -> Dict[str, List[str]]:
    """``["liver=Liver,LIVER", "gtv=GTV,gtv_1"]`` -> {label: spellings}, in the order given."""
    mapping: Dict[str, List[str]] = {}
    for item in items:
        label, _, spellings = item.partition('=')
        names = [s.strip() for s in spellings.split(',') if s.strip()]
        if not label.strip() or not names:
            raise DicomError(f"label mapping {item!r}: expected LABEL=ROI_NAME[,ROI_NAME...], e.g. gtv=GTV,gtv_1")
        if label.strip() in mapping or label.strip() == 'background':
            raise DicomError(f"label mapping {item!r}: label {label.strip()!r} is given twice or reserved")
        mapping[label.strip()] = names
    if not mapping:
        raise DicomError("no label mapping given (-l LABEL=ROI_NAME[,ROI_NAME...])")
    labels_of = {}
    for label, names in mapping.items():
        for spelling in {s.lower() for s in names}:
            labels_of.setdefault(spelling, []).append(label)
    repeated = sorted(s for s, labels in labels_of.items() if len(labels) > 1)
    if repeated:
        raise DicomError(f"label mapping: ROI name(s) {repeated} map to more than one label")
    return mapping


def match_rois(roi_names: Sequence[str], label_map: Dict[str, List[str]], report: PatientReport) -> None:
    """Fills found / missing / ambiguous / unmapped of ``report`` from the ROI names of one patient."""
    used = set()
    for label, spellings in label_map.items():
        wanted = {s.strip().lower() for s in spellings}
        hits = [name for name in roi_names if name.strip().lower() in wanted]
        used.update(hits)
        if not hits:
            report.missing.append(label)
        elif len(hits) > 1:
            report.ambiguous[label] = hits
        else:
            report.found[label] = hits[0]
    report.unmapped = [name for name in roi_names if name not in used]


def _pick_rtstruct(found: DicomFolder) -> Tuple[str, str]:
    """(RTSTRUCT path, CT series UID) of a patient folder; DicomError when not exactly one pair can be chosen."""
    if not found.rtstructs:
        raise DicomError(f"no RTSTRUCT file ({len(found.ct_series)} CT series)")
    if len(found.rtstructs) > 1:
        raise DicomError(f"{len(found.rtstructs)} RTSTRUCT files ({', '.join(os.path.basename(p) for p, _ in found.rtstructs)}); "
                         f"keep one per patient")
    path, header = found.rtstructs[0]
    referenced = [uid for uid in referenced_series_uids(header) if uid in found.ct_series]
    if referenced:
        return path, referenced[0]
    if referenced_series_uids(header):
        raise DicomError(f"{os.path.basename(path)} was drawn on series {', '.join(referenced_series_uids(header))}, "
                         f"which is not in the folder (CT series: {', '.join(found.ct_series) or 'none'})")
    if len(found.ct_series) != 1:
        raise DicomError(f"{os.path.basename(path)} names no CT series and the folder holds {len(found.ct_series)}")
    return path, next(iter(found.ct_series))


def _write_case(image: sitk.Image, label: np.ndarray, images_dir: str, labels_dir: str, case: str) -> None:
    """Writes image and label under temporary names first, so that a failure leaves no half-finished case."""
    label_image = sitk.GetImageFromArray(label.astype(np.uint8))
    label_image.CopyInformation(image)
    targets = [(image, os.path.join(images_dir, f'{case}_0000.nii.gz')),
               (label_image, os.path.join(labels_dir, f'{case}.nii.gz'))]
    temporaries = [path[:-len('.nii.gz')] + '.part.nii.gz' for _, path in targets]
    try:
        for (img, _), tmp in zip(targets, temporaries):
            sitk.WriteImage(img, tmp, useCompression=True)
        for (_, path), tmp in zip(targets, temporaries):
            os.replace(tmp, path)
    finally:
        for tmp in temporaries:
            if os.path.exists(tmp):
                os.remove(tmp)


def convert_patient(patient_folder: str, label_map: Dict[str, List[str]], images_dir: str, labels_dir: str,
                    allow_partial_series: bool = False) -> PatientReport:
    """Converts one patient; problems end up in the report (status 'skipped'), never as a half-written case."""
    case = os.path.basename(os.path.normpath(patient_folder))
    report = PatientReport(case)
    try:
        found = scan_folder(patient_folder)
        rtstruct_path, series_uid = _pick_rtstruct(found)
        series = load_series(found, series_uid)
        structures = read_rtstruct(rtstruct_path, series, allow_partial_series)
        report.warnings += series.warnings + structures.warnings
        match_rois(structures.names(), label_map, report)
        if report.missing or report.ambiguous:
            report.reason = 'every label needs exactly one ROI ' + \
                            '(' + '; '.join([f"missing: {', '.join(report.missing)}"] * bool(report.missing) +
                                            [f"ambiguous: {', '.join(report.ambiguous)}"] * bool(report.ambiguous)) + ')'
            return report
        label = np.zeros(tuple(reversed(series.image.GetSize())), dtype=np.uint8)
        voxel_cc = float(np.prod(series.image.GetSpacing())) / 1000
        for value, (name, roi_name) in enumerate(report.found.items(), start=1):
            mask = structures.mask(roi_name)
            if not mask.any():
                report.reason = f"ROI {roi_name!r} ({name}) has no contour on the CT"
                return report
            report.volumes_cc[name] = round(float(mask.sum()) * voxel_cc, 3)
            label[mask] = value
        _write_case(series.image, label, images_dir, labels_dir, case)
        report.status = 'converted'
    except DicomError as e:
        report.reason = str(e)
    return report


def _dataset_folder(raw_folder: str, dataset_id: int, name: str) -> str:
    prefix = f'Dataset{dataset_id:03d}_'
    others = [d for d in os.listdir(raw_folder) if d.startswith(prefix) and d != prefix + name] \
        if os.path.isdir(raw_folder) else []
    if others:
        raise DicomError(f"{raw_folder}: dataset ID {dataset_id} is taken by {others[0]}; choose another -d")
    return os.path.join(raw_folder, prefix + name)


def _write_json(data, path: str) -> None:
    tmp = path + '.part'
    with open(tmp, 'w') as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


def convert_patients(input_folder: str, raw_folder: str, dataset_id: int, name: str,
                     label_map: Dict[str, List[str]], allow_partial_series: bool = False,
                     patients: Optional[Sequence[str]] = None) -> Tuple[str, List[PatientReport]]:
    """Converts every patient sub-folder of ``input_folder``; returns (data set folder, reports).

    dataset.json lists the labels and counts the cases present, so the data set can be extended by running again
    with more patients. Raises DicomError when no patient could be converted.
    """
    if not os.path.isdir(input_folder):
        raise DicomError(f"{input_folder}: not a folder")
    patients = sorted(patients or [d for d in os.listdir(input_folder)
                                   if os.path.isdir(os.path.join(input_folder, d)) and not d.startswith('.')])
    if not patients:
        raise DicomError(f"{input_folder}: no patient sub-folders (expected one folder per patient)")
    folder = _dataset_folder(raw_folder, dataset_id, name)
    images_dir, labels_dir = os.path.join(folder, 'imagesTr'), os.path.join(folder, 'labelsTr')
    os.makedirs(images_dir, exist_ok=True)
    os.makedirs(labels_dir, exist_ok=True)
    reports = [convert_patient(os.path.join(input_folder, p), label_map, images_dir, labels_dir,
                               allow_partial_series) for p in patients]
    cases = sorted(f for f in os.listdir(labels_dir) if f.endswith('.nii.gz') and not f.endswith('.part.nii.gz'))
    _write_json({'channel_names': {'0': 'CT'},
                 'labels': {'background': 0, **{label: i for i, label in enumerate(label_map, start=1)}},
                 'numTraining': len(cases), 'file_ending': '.nii.gz', 'name': name,
                 'description': 'converted from DICOM CT + RTSTRUCT by nnunet-ras dicom-to-dataset',
                 'roi_names': label_map}, os.path.join(folder, 'dataset.json'))
    _write_json([asdict(r) for r in reports], os.path.join(folder, REPORT_NAME))
    if not any(r.status == 'converted' for r in reports):
        raise DicomError(f"{input_folder}: no patient could be converted:\n" + '\n'.join(r.line() for r in reports))
    return folder, reports
