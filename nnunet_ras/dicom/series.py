"""Reading CT series from DICOM folders: split by series, order by position, check the geometry, apply rescale.

File names and instance numbers say nothing reliable about where a slice is, and a folder exported from a PACS or a
treatment-planning system often holds several series (scout, contrast phases, the RTSTRUCT). So files are grouped by
SeriesInstanceUID and ordered by their position along the slice normal. A series is refused, with a message naming
the folder and the problem, when its slices do not form one regular grid: mixed orientations or image sizes, gantry
tilt (slices shifted sideways), two slices at one position, missing slices or irregular spacing. Resampling such a
series would silently move every contour drawn on it, so the user is asked to export a regular series instead.
Oblique but regular series are read as they are: the image keeps its direction matrix.
"""
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from nnunet_ras.dicom import DicomError

CT_IMAGE_STORAGE = '1.2.840.10008.5.1.4.1.1.2'
RTSTRUCT_STORAGE = '1.2.840.10008.5.1.4.1.1.481.3'
ORIENTATION_TOLERANCE = 1e-4  # direction cosines
POSITION_TOLERANCE_MM = 0.01  # plus 1 % of the slice spacing: scanners round positions


@dataclass
class DicomFolder:
    """The DICOM files of a folder (searched recursively): CT slices by series, and RTSTRUCT files."""
    folder: str
    ct_series: Dict[str, List[Tuple[str, pydicom.Dataset]]] = field(default_factory=dict)
    rtstructs: List[Tuple[str, pydicom.Dataset]] = field(default_factory=list)
    other: List[Tuple[str, str]] = field(default_factory=list)  # (path, modality) of files that are neither


@dataclass
class CtSeries:
    """A CT series on one regular grid: slice headers in grid order and the image in HU."""
    folder: str
    files: List[str]
    headers: List[pydicom.Dataset]  # without pixel data, ordered along the slice normal (index k = image slice k)
    image: sitk.Image
    warnings: List[str] = field(default_factory=list)

    @property
    def first(self) -> pydicom.Dataset:
        return self.headers[0]

    def text(self, keyword: str) -> str:
        """A tag of the first slice as text; '' where it is absent or empty (de-identified series)."""
        return str(self.first.get(keyword, '') or '')

    @property
    def series_uid(self) -> str:
        return self.text('SeriesInstanceUID')

    @property
    def study_uid(self) -> str:
        return self.text('StudyInstanceUID')

    @property
    def frame_of_reference_uid(self) -> str:
        return self.text('FrameOfReferenceUID')

    @property
    def patient_id(self) -> str:
        return self.text('PatientID')

    @property
    def slice_normal(self) -> np.ndarray:
        return np.cross(*_orientation(self.first))

    def slice_positions(self) -> np.ndarray:
        """Position of every slice along the slice normal, in mm."""
        return np.array([_position(h) @ self.slice_normal for h in self.headers])

    def in_plane_index(self, points_xyz: np.ndarray) -> np.ndarray:
        """Continuous (column, row) voxel indices of physical points (n, 3) in mm."""
        direction = np.asarray(self.image.GetDirection()).reshape(3, 3)
        spacing = np.asarray(self.image.GetSpacing())
        index = np.linalg.solve(direction * spacing, (np.asarray(points_xyz) - np.asarray(self.image.GetOrigin())).T).T
        return index[:, :2]

    def outside_fraction(self, index: np.ndarray) -> float:
        """Share of in-plane (column, row) indices (from ``in_plane_index``) that lie outside the slices' extent,
        more than half a pixel beyond it."""
        size = np.asarray(self.image.GetSize()[:2])
        outside = np.any((index < -0.5 - 1e-3) | (index > size - 0.5 + 1e-3), axis=1)
        return float(outside.mean()) if len(outside) else 0.0

    def describe(self) -> str:
        size, spacing = self.image.GetSize(), self.image.GetSpacing()
        return (f"series {self.series_uid or '(no SeriesInstanceUID)'} in {self.folder}: {size[2]} slices of "
                f"{size[0]} x {size[1]}, spacing {spacing[0]:.3g} x {spacing[1]:.3g} x {spacing[2]:.3g} mm")


def _read_header(path: str) -> Optional[pydicom.Dataset]:
    """The header of a DICOM file, or None for files that are not DICOM (DICOMDIR, notes, thumbnails)."""
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError):
        return None
    # De-identified exports sometimes blank the instance's UIDs in the data set but keep them in the file meta
    # information, which belongs to the same file; slices can only be referenced with them.
    meta = getattr(header, 'file_meta', None)
    if meta is not None:
        for tag, meta_tag in (('SOPInstanceUID', 'MediaStorageSOPInstanceUID'),
                              ('SOPClassUID', 'MediaStorageSOPClassUID')):
            if not header.get(tag) and meta.get(meta_tag):
                setattr(header, tag, meta.get(meta_tag))
    return header


def scan_folder(folder: str) -> DicomFolder:
    """Groups the DICOM files below ``folder`` into CT series (by SeriesInstanceUID) and RTSTRUCTs."""
    if not os.path.isdir(folder):
        raise DicomError(f"{folder}: not a folder")
    found = DicomFolder(folder)
    for root, _, names in sorted(os.walk(folder)):
        for name in sorted(names):
            path = os.path.join(root, name)
            header = _read_header(path)
            if header is None:
                continue
            modality = str(header.get('Modality', ''))
            if header.get('SOPClassUID') == RTSTRUCT_STORAGE or modality == 'RTSTRUCT':
                found.rtstructs.append((path, header))
            elif modality == 'CT':
                found.ct_series.setdefault(str(header.get('SeriesInstanceUID', '') or ''), []).append((path, header))
            else:
                found.other.append((path, modality or '?'))
    return found


def _fmt(values) -> str:
    return '[' + ', '.join(f"{float(v):.6g}" for v in values) + ']'


def _orientation(header: pydicom.Dataset) -> Tuple[np.ndarray, np.ndarray]:
    iop = np.asarray(header.ImageOrientationPatient, dtype=float)
    return iop[:3], iop[3:]


def _position(header: pydicom.Dataset) -> np.ndarray:
    return np.asarray(header.ImagePositionPatient, dtype=float)


def check_slice_geometry(headers: Sequence[pydicom.Dataset], where: str) -> Tuple[List[int], float, List[str]]:
    """Checks that the slices form one regular grid; returns (order along the normal, slice spacing, warnings).

    Raises DicomError naming ``where`` for anything that would put voxels or contours in the wrong place.
    """
    warnings: List[str] = []
    for keyword in ('ImageOrientationPatient', 'ImagePositionPatient', 'PixelSpacing', 'Rows', 'Columns'):
        lacking = [i for i, h in enumerate(headers) if keyword not in h or h.get(keyword) in (None, '')]
        if lacking:
            raise DicomError(f"{where}: {len(lacking)} slice(s) lack {keyword}; the slice geometry is unknown")
    if any(int(h.get('NumberOfFrames', 1) or 1) > 1 for h in headers):
        raise DicomError(f"{where}: multi-frame (enhanced) CT is not supported; export the series as single-frame "
                         f"CT images")
    row, column = _orientation(headers[0])
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(column) - 1) > 1e-3 or abs(row @ column) > 1e-3:
        raise DicomError(f"{where}: ImageOrientationPatient {_fmt(np.r_[row, column])} is not two orthogonal unit "
                         f"vectors")
    for h in headers[1:]:
        r, c = _orientation(h)
        if np.abs(np.r_[r, c] - np.r_[row, column]).max() > ORIENTATION_TOLERANCE:
            raise DicomError(f"{where}: mixed slice orientations ({_fmt(np.r_[row, column])} and "
                             f"{_fmt(np.r_[r, c])}); a series must have one orientation")
    for keyword in ('Rows', 'Columns'):
        values = sorted({int(h.get(keyword)) for h in headers})
        if len(values) > 1:
            raise DicomError(f"{where}: slices of different {keyword} {values}")
    try:
        spacings = {tuple(round(float(v), 4) for v in h.PixelSpacing) for h in headers}
    except (TypeError, ValueError):
        raise DicomError(f"{where}: PixelSpacing {headers[0].get('PixelSpacing')} is not two numbers") from None
    if any(len(s) != 2 or not all(np.isfinite(v) and v > 0 for v in s) for s in spacings):
        raise DicomError(f"{where}: PixelSpacing {sorted(spacings)} must be two positive numbers (mm)")
    if len(spacings) > 1:
        raise DicomError(f"{where}: slices of different PixelSpacing {sorted(spacings)}")
    if not np.allclose(row, np.round(row), atol=1e-3) or not np.allclose(column, np.round(column), atol=1e-3):
        warnings.append(f"{where}: oblique slices (ImageOrientationPatient {_fmt(np.r_[row, column])}); "
                        f"the image keeps this direction")

    normal = np.cross(row, column)
    positions = np.array([_position(h) for h in headers])
    along = positions @ normal
    order = [int(i) for i in np.argsort(along, kind='stable')]
    if len(headers) == 1:
        thickness = float(headers[0].get('SliceThickness', 0) or 0)
        return order, thickness if thickness > 0 else 1.0, warnings

    steps = np.diff(positions[order], axis=0)
    along_steps = steps @ normal
    if np.any(along_steps < POSITION_TOLERANCE_MM):
        k = int(np.argmin(along_steps))
        raise DicomError(f"{where}: two slices at the same position {_fmt(positions[order][k])} mm "
                         f"(duplicate files, or two acquisitions in one series)")
    sideways = np.linalg.norm(steps - np.outer(along_steps, normal), axis=1)
    if np.any(sideways > POSITION_TOLERANCE_MM + 0.01 * along_steps):
        angle = float(np.degrees(np.arctan2(sideways.max(), along_steps[int(np.argmax(sideways))])))
        tilt = headers[0].get('GantryDetectorTilt', None)
        raise DicomError(f"{where}: gantry tilt: consecutive slices are shifted sideways by up to "
                         f"{sideways.max():.2f} mm ({angle:.1f} degrees; GantryDetectorTilt = {tilt}); the slices "
                         f"are not a rectangular grid. Reconstruct or export the series without tilt")
    spacing = float(np.median(along_steps))
    tolerance = POSITION_TOLERANCE_MM + 0.01 * spacing
    irregular = np.abs(along_steps - spacing) > tolerance
    if np.any(irregular):
        k = int(np.argmax(np.abs(along_steps - spacing)))
        gap, ratio = along_steps[k], along_steps[k] / spacing
        if abs(ratio - round(ratio)) * spacing <= tolerance and round(ratio) >= 2:
            raise DicomError(f"{where}: {int(round(ratio)) - 1} missing slice(s) between {along[order[k]]:.2f} and "
                             f"{along[order[k + 1]]:.2f} mm (gap {gap:.2f} mm, spacing {spacing:.2f} mm); export the "
                             f"complete series")
        raise DicomError(f"{where}: irregular slice spacing: steps from {along_steps.min():.3f} to "
                         f"{along_steps.max():.3f} mm (median {spacing:.3f} mm, {int(irregular.sum())} step(s) off); "
                         f"export a series with one slice spacing")
    thickness = float(headers[0].get('SliceThickness', 0) or 0)
    if thickness > 0 and thickness < 0.5 * spacing:
        warnings.append(f"{where}: slice thickness {thickness:g} mm is less than half the spacing {spacing:.3g} mm "
                        f"(gaps between slices)")
    return order, spacing, warnings


def _read_pixels_hu(files: Sequence[str], where: str) -> np.ndarray:
    """Pixel data of the slices with each slice's own RescaleSlope/Intercept applied (z, y, x).

    SimpleITK (GDCM) decodes every transfer syntax, compressed ones included, and applies the modality rescale of
    each file it reads; reading slice by slice keeps per-slice rescale values correct.
    """
    slices = []
    for path in files:
        try:
            image = sitk.ReadImage(path)
        except RuntimeError as e:
            raise DicomError(f"{path}: pixel data cannot be read ({str(e).strip().splitlines()[-1]})") from None
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise DicomError(f"{path}: not a grey-scale image")
        slices.append(sitk.GetArrayFromImage(image).reshape(image.GetSize()[1], image.GetSize()[0]))
    if all(np.issubdtype(s.dtype, np.integer) for s in slices):  # integer rescale: nothing to round
        volume = np.stack(slices)
    else:
        volume = np.stack([s.astype(np.float64) for s in slices])
        if not np.all(volume == np.round(volume)):
            return volume.astype(np.float32)
    if volume.min() >= -32768 and volume.max() <= 32767:
        return volume.astype(np.int16, copy=False)
    return volume.astype(np.float32)


def read_ct_series(folder: str, series_uid: Optional[str] = None) -> CtSeries:
    """Reads the CT series of ``folder`` (the one with ``series_uid`` when there are several).

    Raises DicomError when there is no CT series, when several are present and none is chosen, or when the slices
    do not form one regular grid (see check_slice_geometry).
    """
    found = scan_folder(folder)
    return load_series(found, series_uid)


def load_series(found: DicomFolder, series_uid: Optional[str] = None) -> CtSeries:
    """Reads one CT series of a scanned folder."""
    if not found.ct_series:
        raise DicomError(f"{found.folder}: no CT image files found")
    if series_uid is None:
        if len(found.ct_series) > 1:
            listing = '; '.join(f"{uid or '(empty)'} ({len(files)} slices, "
                                f"{files[0][1].get('SeriesDescription', '')!s})" for uid, files in found.ct_series.items())
            raise DicomError(f"{found.folder}: {len(found.ct_series)} CT series, choose one with --series_uid: "
                             f"{listing}")
        series_uid = next(iter(found.ct_series))
    if series_uid not in found.ct_series:
        raise DicomError(f"{found.folder}: no CT series {series_uid} (found: {', '.join(found.ct_series)})")
    entries = found.ct_series[series_uid]
    where = f"{found.folder} (series {series_uid or 'without SeriesInstanceUID'})"
    headers = [h for _, h in entries]
    order, spacing_z, warnings = check_slice_geometry(headers, where)
    files = [entries[i][0] for i in order]
    headers = [headers[i] for i in order]
    if not series_uid:
        warnings.append(f"{where}: the slices have no SeriesInstanceUID (de-identified?)")
    frames = sorted({str(h.get('FrameOfReferenceUID', '') or '') for h in headers})
    if len(frames) > 1:
        raise DicomError(f"{where}: the slices name {len(frames)} frames of reference ({', '.join(f or '(none)' for f in frames)}); "
                         f"a series must lie in one patient coordinate system")
    studies = {str(h.get('StudyInstanceUID', '')) for h in headers}
    if len(studies) > 1:
        warnings.append(f"{where}: the slices name {len(studies)} different StudyInstanceUIDs; the first is used")
    if len({h.get('SOPInstanceUID') for h in headers}) != len(headers):
        warnings.append(f"{where}: SOPInstanceUIDs are missing or repeated; slices cannot be referenced")

    voxels = _read_pixels_hu(files, where)
    expected = (len(files), int(headers[0].Rows), int(headers[0].Columns))
    if voxels.shape != expected:
        raise DicomError(f"{where}: pixel data of shape {voxels.shape} where the headers say {expected}")
    row, column = _orientation(headers[0])
    row_spacing, column_spacing = (float(v) for v in headers[0].PixelSpacing)
    image = sitk.GetImageFromArray(voxels)
    image.SetOrigin(tuple(float(v) for v in _position(headers[0])))
    image.SetSpacing((column_spacing, row_spacing, spacing_z))  # x steps along a row: the column spacing
    image.SetDirection(tuple(np.column_stack([row, column, np.cross(row, column)]).ravel().tolist()))
    return CtSeries(found.folder, files, headers, image, warnings)


def label_on_series_grid(label: sitk.Image, series: CtSeries) -> np.ndarray:
    """A label image resampled (nearest neighbour) onto the series grid, as an array (z, y, x).

    Exact when the label was made on that grid, whatever its own direction convention (e.g. a NIfTI with flipped
    axes), because the mapping goes through physical space.
    """
    resampled = sitk.Resample(label, series.image, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                              label.GetPixelID())
    return sitk.GetArrayFromImage(resampled)
