"""``dicom-to-dataset``: a folder of patients (CT series + RTSTRUCT) -> an nnU-Net raw data set.

Each sub-folder of the input is one patient. The user maps ROI names to labels, several spellings per label
(``gtv=GTV,gtv_1``; matched ignoring case and surrounding spaces); labels are numbered in the order given and a later
label is painted over an earlier one, so list enclosing structures first (liver, then GTV). A patient is converted
only when every label is found exactly once; otherwise it is skipped with the reason, and nothing of it is written.
The per-patient report (found, missing, ambiguous and unmapped ROIs, warnings) goes to the terminal and to
``dicom_conversion_report.json`` in the data set folder.
"""
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_ras._io import link_or_copy, write_image_atomically, write_json_atomically
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
    """Writes image and label, each under its final name only when complete (``write_atomically``)."""
    label_image = sitk.GetImageFromArray(label.astype(np.uint8))
    label_image.CopyInformation(image)
    write_image_atomically(image, os.path.join(images_dir, f'{case}_0000.nii.gz'))
    write_image_atomically(label_image, os.path.join(labels_dir, f'{case}.nii.gz'))


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


def _existing_cases(folder: str, label_map: Dict[str, List[str]]) -> List[str]:
    """The cases of an existing data set that this run may extend: refused when its label map or modality differs,
    since the old cases would keep the old numbering under the new dataset.json."""
    from nnunet_ras.dataset_checks import load_dataset_json
    json_path = os.path.join(folder, 'dataset.json')
    existing = load_dataset_json(json_path)
    labels = {'background': 0, **{label: i for i, label in enumerate(label_map, start=1)}}
    if list(existing['labels'].items()) != list(labels.items()):
        raise DicomError(f"{folder}: exists with the labels {existing['labels']}, this run asks for {labels}; a data "
                         f"set cannot mix label maps. Give the labels in the same order, choose another -d, or use "
                         f"--overwrite to replace the data set")
    if existing['channel_names'] != {'0': 'CT'}:
        raise DicomError(f"{folder}: exists with the channels {existing['channel_names']}, not a CT data set; choose "
                         f"another -d or use --overwrite")
    labels_dir = os.path.join(folder, 'labelsTr')
    return sorted(f[:-len('.nii.gz')] for f in os.listdir(labels_dir) if f.endswith('.nii.gz')
                  and not f.startswith('.')) if os.path.isdir(labels_dir) else []


def convert_patients(input_folder: str, raw_folder: str, dataset_id: int, name: str,
                     label_map: Dict[str, List[str]], allow_partial_series: bool = False,
                     patients: Optional[Sequence[str]] = None, overwrite: bool = False
                     ) -> Tuple[str, List[PatientReport]]:
    """Converts every patient sub-folder of ``input_folder``; returns (data set folder, reports).

    The data set is written into a hidden work folder (``dataset_ids.claim_dataset``: the id must be free in raw,
    preprocessed and results) and renamed into place when complete. Running again into an existing data set of the
    same name extends it, only when the label map and modality are the same; its cases are kept (hard links) and
    patients already in it are skipped with the reason. ``overwrite`` replaces the data set whole. Raises DicomError
    when no patient could be converted; then nothing changes.
    """
    from nnunet_ras.dataset_ids import check_id_and_name, claim_dataset
    if not os.path.isdir(input_folder):
        raise DicomError(f"{input_folder}: not a folder")
    check_id_and_name(dataset_id, name)
    patients = sorted(patients or [d for d in os.listdir(input_folder)
                                   if os.path.isdir(os.path.join(input_folder, d)) and not d.startswith('.')])
    if not patients:
        raise DicomError(f"{input_folder}: no patient sub-folders (expected one folder per patient)")
    if os.path.lexists(raw_folder) and not os.path.isdir(raw_folder):
        raise DicomError(f"{raw_folder}: the raw folder (-o) is a file")
    os.makedirs(raw_folder, exist_ok=True)
    existing_folder = os.path.join(raw_folder, f'Dataset{dataset_id:03d}_{name}')
    existing = _existing_cases(existing_folder, label_map) if os.path.isdir(existing_folder) and not overwrite \
        else []
    with claim_dataset(raw_folder, dataset_id, name, replace=os.path.isdir(existing_folder)) as claim:
        folder = claim.work
        images_dir, labels_dir = os.path.join(folder, 'imagesTr'), os.path.join(folder, 'labelsTr')
        os.makedirs(images_dir)
        os.makedirs(labels_dir)
        for case in existing:
            for sub, file_name in (('imagesTr', f'{case}_0000.nii.gz'), ('labelsTr', f'{case}.nii.gz')):
                link_or_copy(os.path.join(existing_folder, sub, file_name), os.path.join(folder, sub, file_name))
        reports = []
        for p in patients:
            if p in existing:
                reports.append(PatientReport(p, reason=f"already in {existing_folder} (kept; use --overwrite to "
                                                       f"convert the data set again)"))
                continue
            reports.append(convert_patient(os.path.join(input_folder, p), label_map, images_dir, labels_dir,
                                           allow_partial_series))
        if not any(r.status == 'converted' for r in reports):
            raise DicomError(f"{input_folder}: no patient could be converted:\n" +
                             '\n'.join(r.line() for r in reports))
        cases = sorted(f for f in os.listdir(labels_dir) if f.endswith('.nii.gz') and not f.startswith('.'))
        roi_names = dict(label_map)
        if existing:
            from nnunet_ras.dataset_checks import load_dataset_json
            for label, spellings in load_dataset_json(os.path.join(existing_folder, 'dataset.json')).get(
                    'roi_names', {}).items():
                roi_names[label] = list(dict.fromkeys(list(spellings) + roi_names.get(label, [])))
        write_json_atomically(os.path.join(folder, 'dataset.json'), {
            'channel_names': {'0': 'CT'},
            'labels': {'background': 0, **{label: i for i, label in enumerate(label_map, start=1)}},
            'numTraining': len(cases), 'file_ending': '.nii.gz', 'name': name,
            'description': 'converted from DICOM CT + RTSTRUCT by nnunet-ras dicom-to-dataset',
            'roi_names': roi_names})
        write_json_atomically(os.path.join(folder, REPORT_NAME), [asdict(r) for r in reports])
    return claim.target, reports
