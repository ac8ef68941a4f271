"""RTSTRUCT in and out with rt-utils, with the checks that make a wrong import or export fail loudly.

rt-utils turns masks into contours (OpenCV) and contours into masks on a series; this module decides *which*
contours belong to which slice and refuses what rt-utils would get wrong without telling:

* contours that reference images missing from the CT series (an incomplete export, or another series),
* contours that reference a slice but lie elsewhere,
* pixel grids rt-utils does not map correctly (rectangular images, non-square pixels),
* series without the identity an RTSTRUCT has to copy (frame of reference, study and series UIDs).

Masks are numpy arrays (z, y, x) on the series grid, i.e. in the order of ``CtSeries.image``.
"""
import contextlib
import copy
import io
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pydicom
import pydicom.charset
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence as DicomSequence

from nnunet_ras._io import write_atomically
from nnunet_ras.dicom import DicomError
from nnunet_ras.dicom.series import RTSTRUCT_STORAGE, CtSeries

DEFAULT_COLORS = {'GTV': (255, 0, 0), 'CTV': (255, 165, 0), 'PTV': (0, 128, 255)}
RT_INTERPRETED_TYPES = ('EXTERNAL', 'PTV', 'CTV', 'GTV', 'TREATED_VOLUME', 'IRRAD_VOLUME', 'OAR', 'BOLUS',
                        'AVOIDANCE', 'ORGAN', 'MARKER', 'REGISTRATION', 'ISOCENTER', 'CONTRAST_AGENT', 'CAVITY',
                        'BRACHY_CHANNEL', 'BRACHY_ACCESSORY', 'BRACHY_SRC_APP', 'BRACHY_CHNL_SHLD', 'SUPPORT',
                        'FIXATION', 'DOSE_REGION', 'CONTROL')


@dataclass
class Roi:
    """A structure to export: a mask on the series grid, and how it is shown and interpreted."""
    name: str
    mask: np.ndarray  # bool (z, y, x)
    interpreted_type: str = 'ORGAN'  # RTROIInterpretedType: GTV, CTV, PTV, ORGAN, EXTERNAL, AVOIDANCE, ...
    color: Optional[Tuple[int, int, int]] = None  # None: GTV/CTV/PTV defaults, else rt-utils' palette
    description: str = ''


@dataclass
class ImportedRoi:
    number: int
    name: str
    interpreted_type: str
    color: Optional[Tuple[int, int, int]]
    mask: np.ndarray  # bool (z, y, x)
    contours: int  # closed planar contours in the file
    contours_on_series: int  # of those, the ones on slices of the series


@dataclass
class StructureSet:
    path: str
    rois: List[ImportedRoi]
    warnings: List[str] = field(default_factory=list)

    def names(self) -> List[str]:
        return [r.name for r in self.rois]

    def mask(self, name: str) -> np.ndarray:
        matches = [r for r in self.rois if r.name == name]
        if len(matches) != 1:
            raise DicomError(f"{self.path}: {len(matches)} ROIs named {name!r} (ROIs: {', '.join(self.names())})")
        return matches[0].mask


def check_rt_utils_grid(series: CtSeries) -> None:
    """rt-utils maps contours assuming square images with square pixels; anything else would be misplaced."""
    first = series.first
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    if int(first.Rows) != int(first.Columns) or abs(row_spacing - column_spacing) > 1e-4 * row_spacing:
        raise DicomError(f"{series.describe()}: RTSTRUCT contours need square images with square pixels here "
                         f"(rt-utils), but the slices are {first.Columns} x {first.Rows} pixels of "
                         f"{column_spacing:g} x {row_spacing:g} mm; resample the series first")
    if len({h.get('SOPInstanceUID') for h in series.headers}) != len(series.headers) or not all(
            h.get('SOPInstanceUID') for h in series.headers):
        raise DicomError(f"{series.describe()}: slices without unique SOPInstanceUIDs cannot carry contours")


def check_identity(series: CtSeries, allow_missing_identity: bool = False) -> List[str]:
    """The UIDs an RTSTRUCT or SEG must copy from its CT. Missing ones are an error unless explicitly allowed.

    They are copied as they are (empty stays empty), never invented: a made-up StudyInstanceUID would attach the
    structures to a study that does not exist. A missing FrameOfReferenceUID is always an error: contours without a
    frame of reference cannot be placed.
    """
    if not series.frame_of_reference_uid:
        raise DicomError(f"{series.describe()}: no FrameOfReferenceUID, so contours cannot be tied to the CT")
    missing = [keyword for keyword in ('StudyInstanceUID', 'SeriesInstanceUID', 'PatientID')
               if not series.first.get(keyword)]
    if missing and not allow_missing_identity:
        raise DicomError(f"{series.describe()}: the CT has empty {', '.join(missing)} (de-identified?); an RTSTRUCT "
                         f"copies them and would not attach to the study. Use --allow_missing_identity to write it "
                         f"with the empty values")
    return [f"{series.describe()}: written with empty {', '.join(missing)} copied from the CT"] if missing else []


def check_roi_name(name: str, series: Optional[CtSeries]) -> None:
    """An ROI name must fit DICOM's LO value (at most 64 characters, no backslash or control characters) and the
    character sets it is written in: the RTSTRUCT's ISO_IR 100 (set by rt-utils) and the CT's own (the DICOM SEG
    copies it; ASCII when the CT names none). Nothing to check without a DICOM series (no DICOM output)."""
    if series is None:
        return
    if not name.strip():
        raise DicomError("an ROI name is empty")
    if len(name) > 64:
        raise DicomError(f"ROI name {name!r} has {len(name)} characters; DICOM allows at most 64")
    if '\\' in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise DicomError(f"ROI name {name!r}: backslash and control characters are not allowed in DICOM names")
    charsets = series.first.get('SpecificCharacterSet') or []
    charsets = [charsets] if isinstance(charsets, str) else [c for c in charsets if c]
    python_codecs = ['latin_1']
    try:
        ct_codecs = pydicom.charset.convert_encodings(charsets) if charsets else ['ascii']
    except LookupError:
        ct_codecs = ['ascii']
    for codec in python_codecs + [ct_codecs[0] if len(ct_codecs) == 1 else None]:
        if codec is None:
            continue
        try:
            name.encode(codec)
        except (UnicodeEncodeError, LookupError):
            raise DicomError(f"ROI name {name!r}: holds characters that the character set "
                             f"{'ISO_IR 100 of the RTSTRUCT' if codec == 'latin_1' else (charsets or ['default (ASCII)'])[0] + ' of the CT'} "
                             f"cannot represent; use another name") from None


def _headers_for_rt_utils(series: CtSeries) -> List[Dataset]:
    """Slice headers with the attributes rt-utils reads unconditionally; absent ones are copied as empty."""
    headers = []
    for h in series.headers:
        h = copy.deepcopy(h)
        for keyword in ('StudyDate', 'StudyTime', 'StudyID', 'StudyInstanceUID', 'SeriesInstanceUID'):
            if keyword not in h:
                setattr(h, keyword, '')
        headers.append(h)
    return headers


def write_rtstruct(series: CtSeries, rois: Sequence[Roi], path: str, label: str = 'nnunet_ras',
                   allow_missing_identity: bool = False) -> List[str]:
    """Writes an RTSTRUCT referencing ``series`` (study, series, frame of reference, every slice); returns warnings.

    Patient and study attributes are copied from the CT by rt-utils; the file appears under ``path`` only when
    complete.
    """
    from rt_utils import RTStruct
    from rt_utils.ds_helper import create_rtstruct_dataset

    check_rt_utils_grid(series)
    warnings = check_identity(series, allow_missing_identity)
    expected_shape = tuple(reversed(series.image.GetSize()))
    headers = _headers_for_rt_utils(series)
    structure_set = RTStruct(headers, create_rtstruct_dataset(headers))
    ds = structure_set.ds
    ds.Manufacturer = 'nnunet_ras'
    ds.ManufacturerModelName = 'nnunet_ras'
    ds.InstitutionName = series.first.get('InstitutionName', '')
    ds.SeriesDescription = label
    ds.StructureSetLabel = label[:16]
    for keyword in ('AccessionNumber', 'ReferringPhysicianName'):
        setattr(ds, keyword, series.first.get(keyword, ''))
    for roi in rois:
        check_roi_name(roi.name, series)
        if roi.mask.shape != expected_shape:
            raise DicomError(f"ROI {roi.name!r}: mask of shape {roi.mask.shape}, the series is {expected_shape}")
        if roi.interpreted_type not in RT_INTERPRETED_TYPES:
            raise DicomError(f"ROI {roi.name!r}: {roi.interpreted_type!r} is not an RT ROI interpreted type "
                             f"({', '.join(RT_INTERPRETED_TYPES)})")
        if not roi.mask.any():
            warnings.append(f"ROI {roi.name!r} is empty")
        color = roi.color or DEFAULT_COLORS.get(roi.interpreted_type)
        with contextlib.redirect_stdout(io.StringIO()):  # rt-utils prints progress
            structure_set.add_roi(mask=np.ascontiguousarray(roi.mask.astype(bool).transpose(1, 2, 0)),
                                  color=list(color) if color else None, name=roi.name, description=roi.description,
                                  roi_generation_algorithm=0)  # AUTOMATIC
        ds.RTROIObservationsSequence[-1].RTROIInterpretedType = roi.interpreted_type
    write_atomically(path, lambda temporary: ds.save_as(temporary, enforce_file_format=True))
    return warnings


def _read_rtstruct_dataset(path: str) -> Dataset:
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError) as e:
        raise DicomError(f"{path}: not a readable DICOM file ({e})") from None
    if ds.get('SOPClassUID') != RTSTRUCT_STORAGE:
        raise DicomError(f"{path}: not an RTSTRUCT (SOP class {ds.get('SOPClassUID', 'missing')}, modality "
                         f"{ds.get('Modality', 'missing')})")
    for keyword in ('StructureSetROISequence', 'ROIContourSequence'):
        if keyword not in ds:
            raise DicomError(f"{path}: the RTSTRUCT has no {keyword}")
    return ds


def referenced_series_uids(ds: Dataset) -> List[str]:
    """The CT series an RTSTRUCT says it was drawn on (empty when it does not say)."""
    return [str(series.SeriesInstanceUID)
            for frame in ds.get('ReferencedFrameOfReferenceSequence', [])
            for study in frame.get('RTReferencedStudySequence', [])
            for series in study.get('RTReferencedSeriesSequence', [])]


def _reference(header: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = header.SOPClassUID
    item.ReferencedSOPInstanceUID = header.SOPInstanceUID
    return item


def read_rtstruct(path: str, series: CtSeries, allow_partial_series: bool = False) -> StructureSet:
    """Rasterises every ROI of the RTSTRUCT ``path`` onto ``series``.

    Each closed planar contour is assigned to a slice by its referenced image, or, where it names none, by its
    position along the slice normal; its position is checked against that slice. Contours on slices that are not in
    the series are an error unless ``allow_partial_series`` (e.g. a series excerpt), when they are left out and
    reported.
    """
    from rt_utils.image_helper import create_series_mask_from_contour_sequence

    ds = _read_rtstruct_dataset(path)
    check_rt_utils_grid(series)
    warnings: List[str] = []
    referenced = referenced_series_uids(ds)
    if referenced and series.series_uid not in referenced:
        raise DicomError(f"{path}: the RTSTRUCT was drawn on series {', '.join(sorted(set(referenced)))}, not on "
                         f"{series.describe()}")
    if not referenced:
        warnings.append(f"{path}: names no referenced series; contours are matched to slices by their image "
                        f"references and positions")
    if ds.get('StudyInstanceUID') and series.study_uid and ds.StudyInstanceUID != series.study_uid:
        warnings.append(f"{path}: StudyInstanceUID {ds.StudyInstanceUID} differs from the CT's {series.study_uid}")

    index_of_uid = {str(h.SOPInstanceUID): k for k, h in enumerate(series.headers)}
    positions = series.slice_positions()
    normal = series.slice_normal
    half_spacing = 0.5 * series.image.GetSpacing()[2]
    contours_by_roi = {str(item.get('ReferencedROINumber')): item for item in ds.ROIContourSequence}
    types = {str(o.get('ReferencedROINumber')): str(o.get('RTROIInterpretedType', '') or '')
             for o in ds.get('RTROIObservationsSequence', [])}
    off_series: List[str] = []
    partly_outside: Dict[str, int] = {}
    skipped_types: Dict[str, int] = {}
    rois = []
    for structure in ds.StructureSetROISequence:
        number, name = str(structure.ROINumber), str(structure.get('ROIName', ''))
        frame = structure.get('ReferencedFrameOfReferenceUID')
        if frame and series.frame_of_reference_uid and frame != series.frame_of_reference_uid:
            warnings.append(f"{path}: ROI {name!r} names frame of reference {frame}, the CT has "
                            f"{series.frame_of_reference_uid}; its image references are used")
        roi_contour = contours_by_roi.get(number)
        color = tuple(int(c) for c in roi_contour.ROIDisplayColor) if roi_contour is not None and \
            roi_contour.get('ROIDisplayColor') else None
        on_slices = DicomSequence()
        total = 0
        for contour in (roi_contour.get('ContourSequence', []) if roi_contour is not None else []):
            kind = str(contour.get('ContourGeometricType', ''))
            points = np.asarray(contour.get('ContourData', []), dtype=float).reshape(-1, 3)
            if kind != 'CLOSED_PLANAR' or len(points) < 3:
                skipped_types[kind or 'empty'] = skipped_types.get(kind or 'empty', 0) + 1
                continue
            total += 1
            outside = series.outside_fraction(points)
            if outside == 1:
                raise DicomError(f"{path}: a contour of ROI {name!r} lies entirely outside the CT's field of view "
                                 f"(another series or frame of reference?)")
            if outside > 0:
                partly_outside[name] = partly_outside.get(name, 0) + 1
            level = float(np.mean(points @ normal))
            images = contour.get('ContourImageSequence', [])
            uid = str(images[0].ReferencedSOPInstanceUID) if images else None
            if uid is not None and uid in index_of_uid:
                k = index_of_uid[uid]
                if abs(positions[k] - level) > half_spacing:
                    raise DicomError(f"{path}: a contour of ROI {name!r} references the slice at "
                                     f"{positions[k]:.2f} mm but lies at {level:.2f} mm")
            elif uid is None and np.min(np.abs(positions - level)) <= half_spacing:
                k = int(np.argmin(np.abs(positions - level)))
            else:
                off_series.append(f"ROI {name!r} at {level:.2f} mm" + (f" referencing image {uid}" if uid else ''))
                continue
            item = Dataset()
            item.ContourImageSequence = DicomSequence([_reference(series.headers[k])])
            item.ContourData = contour.ContourData
            on_slices.append(item)
        if roi_contour is None:
            warnings.append(f"{path}: ROI {name!r} has no ROI contour item; imported as empty")
        mask = create_series_mask_from_contour_sequence(series.headers, on_slices).transpose(2, 0, 1) \
            if len(on_slices) else np.zeros(tuple(reversed(series.image.GetSize())), dtype=bool)
        rois.append(ImportedRoi(int(number), name, types.get(number, ''), color, mask.astype(bool), total,
                                len(on_slices)))
    if off_series:
        message = (f"{path}: {len(off_series)} contour(s) lie on slices that are not in the CT {series.describe()} "
                   f"(slices from {positions.min():.2f} to {positions.max():.2f} mm), e.g. {off_series[0]}")
        if not allow_partial_series:
            raise DicomError(message + "; the series is incomplete or the RTSTRUCT belongs to another series "
                                       "(--allow_partial_series imports the contours on the slices present)")
        warnings.append(message + '; left out')
    for roi_name, count in partly_outside.items():
        warnings.append(f"{path}: {count} contour(s) of ROI {roi_name!r} reach outside the CT's field of view; the "
                        f"mask is cut at the image border")
    for kind, count in skipped_types.items():
        warnings.append(f"{path}: {count} contour(s) of type {kind} skipped (only CLOSED_PLANAR encloses a volume)")
    return StructureSet(path, rois, warnings)
