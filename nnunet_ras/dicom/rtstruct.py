"""RTSTRUCT in and out, with the checks that make a wrong import or export fail loudly.

rt-utils builds the structure set's modules (patient, study, series, referenced frame of reference, one item per
ROI); the contours themselves come from ``contours.mask_to_polygons`` (outlines between voxel centres, keyholed
holes) and are written as DS values within the 16-character limit, so that dciodvfy finds nothing to report and
independent readers rasterise them back to the voxels written. This module decides *which* contours belong to which
slice and refuses what would otherwise be read wrongly without telling:

* contours that reference images missing from the CT series (an incomplete export, or another series),
* contours that reference a slice but lie elsewhere,
* series without the identity an RTSTRUCT has to copy (frame of reference, study and series UIDs),
* ROI names a planning system cannot hold (over 64 characters, or characters outside the file's character set).

Masks are numpy arrays (z, y, x) on the series grid, i.e. in the order of ``CtSeries.image``.
"""
import contextlib
import copy
import io
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag

from nnunet_ras._io import write_atomically
from nnunet_ras.dicom import DicomError
from nnunet_ras.dicom.contours import mask_to_polygons, polygons_to_mask
from nnunet_ras.dicom.series import RTSTRUCT_STORAGE, CtSeries

CONTOUR_DATA = 0x30060050
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


def check_slice_references(series: CtSeries) -> None:
    """Contours name the slice they lie on by its SOPInstanceUID, so every slice needs its own."""
    if len({h.get('SOPInstanceUID') for h in series.headers}) != len(series.headers) or not all(
            h.get('SOPInstanceUID') for h in series.headers):
        raise DicomError(f"{series.describe()}: slices without unique SOPInstanceUIDs cannot carry contours")


def _to_patient(points_rc: np.ndarray, header: Dataset) -> np.ndarray:
    """(row, column) voxel coordinates of a slice -> patient mm, from that slice's own header."""
    orientation = np.asarray(header.ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in header.PixelSpacing)
    return np.asarray(header.ImagePositionPatient, dtype=float) + points_rc[:, :1] * orientation[3:] * row_spacing + \
        points_rc[:, 1:] * orientation[:3] * column_spacing


def _ds(value: float) -> str:
    """A coordinate as a DICOM DS string: 0.1 micrometre resolution, at most 16 characters."""
    text = f"{value:.4f}".rstrip('0').rstrip('.')
    text = '0' if text in ('', '-0') else text
    if len(text) > 16:
        raise DicomError(f"contour coordinate {value} mm does not fit a DICOM decimal string")
    return text


def _ds_element(tag: int, values: np.ndarray) -> RawDataElement:
    """A DS element from numbers, encoded once as text (pydicom would otherwise build and validate an object per
    value: half the time of writing a structure set)."""
    text = '\\'.join(_ds(v) for v in values).encode('ascii')
    text += b' ' * (len(text) % 2)
    return RawDataElement(Tag(tag), 'DS', len(text), text, 0, True, True)


def contour_sequence(mask: np.ndarray, series: CtSeries) -> DicomSequence:
    """The Contour Sequence of a (z, y, x) mask: per slice, one CLOSED_PLANAR contour per region (holes keyholed)."""
    sequence = DicomSequence()
    for k in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
        header = series.headers[k]
        for polygon in mask_to_polygons(mask[k]):
            item = Dataset()
            item.ContourImageSequence = DicomSequence([_reference(header)])
            item.ContourGeometricType = 'CLOSED_PLANAR'
            item.NumberOfContourPoints = len(polygon)
            item[CONTOUR_DATA] = _ds_element(CONTOUR_DATA, _to_patient(polygon, header).ravel())
            sequence.append(item)
    return sequence


def _encodes(text: str, codec: str) -> bool:
    try:
        text.encode(codec)
        return True
    except (UnicodeEncodeError, LookupError):
        return False


def check_roi_name(name: str, encodings: Sequence[str]) -> None:
    """ROIName is a DICOM LO: at most 64 characters of the file's character set, no backslash or control codes."""
    problem = None
    if not name.strip():
        problem = 'is empty'
    elif len(name) > 64:
        problem = f'has {len(name)} characters, DICOM allows 64'
    elif '\\' in name or any(ord(ch) < 32 for ch in name):
        problem = 'contains a backslash or a control character'
    else:
        codecs = pydicom.charset.convert_encodings(list(encodings) or ['ISO_IR 6'])
        if not any(_encodes(name, codec) for codec in codecs):
            problem = f"has characters the character set {' '.join(encodings) or 'ISO_IR 6'} cannot hold"
    if problem:
        raise DicomError(f"ROI name {name!r} {problem}; choose another with --roi_names")


def check_roi_labels(names_and_types: Sequence[Tuple[str, str]], charset: Optional[Sequence[str]]) -> None:
    """Every ROI's interpreted type is an RT one, its name fits ``charset`` (when a structure set is written) and
    no name repeats; checked before anything is computed or written."""
    for name, kind in names_and_types:
        if kind not in RT_INTERPRETED_TYPES:
            raise DicomError(f"ROI {name!r}: {kind!r} is not an RT ROI interpreted type "
                             f"({', '.join(RT_INTERPRETED_TYPES)})")
        if charset is not None:
            check_roi_name(name, charset)
    names = [name for name, _ in names_and_types]
    if len(set(names)) != len(names):
        raise DicomError(f"ROI names repeat ({', '.join(names)}); a planning system tells structures apart by name")


def structure_set_charset(series: CtSeries) -> List[str]:
    """The character set the structure set is written in: the CT's own, ISO_IR 100 when the CT names none."""
    charset = series.first.get('SpecificCharacterSet') or 'ISO_IR 100'
    return [charset] if isinstance(charset, str) else list(charset)


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

    Patient and study attributes are copied from the CT; the file appears under ``path`` only when complete.
    Everything is checked before anything is written.
    """
    from rt_utils import RTStruct
    from rt_utils.ds_helper import create_rtstruct_dataset

    check_slice_references(series)
    warnings = check_identity(series, allow_missing_identity)
    expected_shape = tuple(reversed(series.image.GetSize()))
    charset = structure_set_charset(series)
    for roi in rois:
        if roi.mask.shape != expected_shape:
            raise DicomError(f"ROI {roi.name!r}: mask of shape {roi.mask.shape}, the series is {expected_shape}")
    check_roi_labels([(roi.name, roi.interpreted_type) for roi in rois], charset)

    headers = _headers_for_rt_utils(series)
    structure_set = RTStruct(headers, create_rtstruct_dataset(headers))
    ds = structure_set.ds
    ds.SpecificCharacterSet = charset if len(charset) > 1 else charset[0]
    ds.Manufacturer = 'nnunet_ras'
    ds.ManufacturerModelName = 'nnunet_ras'
    ds.InstitutionName = series.first.get('InstitutionName', '')
    ds.SeriesDescription = label
    ds.StructureSetLabel = label[:16]
    ds.OperatorsName = ''  # Type 2 of the RT Series module: an algorithm, no operator
    ds.FrameOfReferenceUID = series.frame_of_reference_uid  # Frame of Reference module, Type 1
    ds.PositionReferenceIndicator = series.first.get('PositionReferenceIndicator', '')
    for keyword in ('AccessionNumber', 'ReferringPhysicianName'):
        setattr(ds, keyword, series.first.get(keyword, ''))
    empty = np.zeros(expected_shape[1:] + expected_shape[:1], dtype=bool)  # rt-utils' (y, x, z) order
    for roi in rois:
        if not roi.mask.any():
            warnings.append(f"ROI {roi.name!r} is empty")
        color = roi.color or DEFAULT_COLORS.get(roi.interpreted_type)
        with contextlib.redirect_stdout(io.StringIO()):  # rt-utils prints progress
            structure_set.add_roi(mask=empty, color=list(color) if color else None, name=roi.name,
                                  description=roi.description, roi_generation_algorithm=0)  # AUTOMATIC
        ds.ROIContourSequence[-1].ContourSequence = contour_sequence(roi.mask.astype(bool), series)
        for item in ds.ROIContourSequence[-1].ContourSequence:  # encoded as the file is (implicit VR LE, ASCII
            item.set_original_encoding(True, True, pydicom.charset.default_encoding)  # only): written as they are
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
    """Rasterises every ROI of the RTSTRUCT ``path`` onto ``series`` (voxel centres inside or on a contour, the
    contours of a slice combined by XOR: see ``contours.polygons_to_mask``).

    Each closed planar contour is assigned to a slice by its referenced image, or, where it names none, by its
    position along the slice normal; its position is checked against that slice. Contours on slices that are not in
    the series are an error unless ``allow_partial_series`` (e.g. a series excerpt), when they are left out and
    reported.
    """
    ds = _read_rtstruct_dataset(path)
    check_slice_references(series)
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
        on_slices: Dict[int, List[np.ndarray]] = {}
        total = on_series = 0
        for contour in (roi_contour.get('ContourSequence', []) if roi_contour is not None else []):
            kind = str(contour.get('ContourGeometricType', ''))
            points = np.asarray(contour.get('ContourData', []), dtype=float).reshape(-1, 3)
            if kind != 'CLOSED_PLANAR' or len(points) < 3:
                skipped_types[kind or 'empty'] = skipped_types.get(kind or 'empty', 0) + 1
                continue
            total += 1
            index = series.in_plane_index(points)  # (column, row) on every slice: the series is regular
            outside = series.outside_fraction(index)
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
            on_slices.setdefault(k, []).append(index[:, ::-1])
            on_series += 1
        if roi_contour is None:
            warnings.append(f"{path}: ROI {name!r} has no ROI contour item; imported as empty")
        mask = np.zeros(tuple(reversed(series.image.GetSize())), dtype=bool)
        for k, polygons in on_slices.items():
            mask[k] = polygons_to_mask(polygons, mask.shape[1:])
        rois.append(ImportedRoi(int(number), name, types.get(number, ''), color, mask, total, on_series))
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
