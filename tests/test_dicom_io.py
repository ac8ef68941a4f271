"""DICOM CT reading, RTSTRUCT and SEG import/export on the real files in ../shared/data (and edited copies of them)."""
import glob
import os
import shutil

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from nnunet_ras.dicom import DicomError
from nnunet_ras.dicom.phantom import write_ct_series
from nnunet_ras.dicom.rtstruct import Roi, read_rtstruct, write_rtstruct
from nnunet_ras.dicom.seg import read_dicom_seg, write_dicom_seg
from nnunet_ras.dicom.series import label_on_series_grid, read_ct_series, scan_folder
from nnunet_ras.evaluation.metrics import dice

pytestmark = pytest.mark.shared_data
DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data'))
LIVER = 5  # TotalSegmentator class of example_seg_dicom.nii.gz


def data(*parts: str) -> str:
    """A path in the shared test data; a missing data folder fails the test (it is never skipped)."""
    path = os.path.join(DATA, *parts)
    if not os.path.exists(path):
        pytest.fail(f"test data {path} is missing: these tests need the shared data folder ../shared/data "
                    f"next to the repository (see its README.md)")
    return path


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return dice(a.astype(np.uint8), b.astype(np.uint8), 1)


def _vertices_between_voxels(rtstruct_path: str, roi_name: str, image: sitk.Image, mask: np.ndarray) -> float:
    """Fraction of the ROI's contour vertices that lie on the border of ``mask``, mapped with SimpleITK's geometry:
    half a voxel in-plane from a voxel inside and from one outside (contours pass between voxel centres).

    An independent check of the patient coordinates written: a round trip through our writer and reader alone would
    not notice an error that both share (e.g. swapped axes).
    """
    ds = pydicom.dcmread(rtstruct_path)
    number = next(r.ROINumber for r in ds.StructureSetROISequence if r.ROIName == roi_name)
    contours = next(c for c in ds.ROIContourSequence if str(c.ReferencedROINumber) == str(number)).ContourSequence
    hits = total = 0
    for contour in contours:
        for point in np.asarray(contour.ContourData, dtype=float).reshape(-1, 3):
            x, y, z = image.TransformPhysicalPointToContinuousIndex(point.tolist())
            k = int(round(z))
            neighbours = {(int(round(y + dy)), int(round(x + dx))) for dy in (-0.25, 0.25) for dx in (-0.25, 0.25)}
            values = {bool(mask[k, j, i]) if 0 <= j < mask.shape[1] and 0 <= i < mask.shape[2] else False
                      for j, i in neighbours}
            hits += abs(z - k) < 1e-3 and values == {True, False}
            total += 1
    return hits / total


def _shoelace_area(points_xy: np.ndarray) -> float:
    x, y = points_xy[:, 0], points_xy[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


# --- CT series ---------------------------------------------------------------------------------------------------

def test_series_read_matches_gdcm_and_orders_by_position():
    series = read_ct_series(data('ct_abdomen_example', 'example_ct_dicom'))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(series.folder))
    reference = reader.Execute()
    assert series.image.GetSize() == (512, 512, 20)
    assert np.allclose(series.image.GetSpacing(), (0.9765625, 0.9765625, 2.0))
    assert np.allclose(series.image.GetOrigin(), reference.GetOrigin())
    assert np.allclose(series.image.GetDirection(), reference.GetDirection())
    assert np.array_equal(sitk.GetArrayFromImage(series.image), sitk.GetArrayFromImage(reference))
    assert np.all(np.diff(series.slice_positions()) > 0)
    # the slices were numbered and named from head to feet; the grid runs along +z
    assert series.files[0].endswith('16592') and series.files[-1].endswith('16573')
    assert any('no SeriesInstanceUID' in w for w in series.warnings)


def test_series_order_does_not_follow_file_names(tmp_path):
    sources = sorted(glob.glob(os.path.join(data('dicom_rt', 'dcmqi', 'ct-3slice'), '*.dcm')))
    for target, source in zip(('c.dcm', 'a.dcm', 'b.dcm'), sources):
        shutil.copy(source, tmp_path / target)
    series = read_ct_series(str(tmp_path))
    assert [os.path.basename(f) for f in series.files] == ['b.dcm', 'a.dcm', 'c.dcm']  # ascending along the normal
    assert np.allclose(np.diff(series.slice_positions()), 1.0)


def test_rescale_slope_and_intercept_applied():
    for folder in (('dicom_rt', 'rt-utils', 'mock_data'), ('dicom_rt', 'rt-utils', 'oriented_data')):
        series = read_ct_series(data(*folder))
        voxels = sitk.GetArrayFromImage(series.image)
        for k, path in enumerate(series.files):
            ds = pydicom.dcmread(path)
            expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            assert np.allclose(voxels[k], expected, atol=1e-6), path
    assert read_ct_series(data('dicom_rt', 'rt-utils', 'oriented_data')).image.GetPixelID() == sitk.sitkFloat32


def test_several_series_are_split_by_series_uid(tmp_path):
    shutil.copytree(data('dicom_rt', 'dcmqi', 'ct-3slice'), tmp_path / 'a')
    for path in glob.glob(os.path.join(data('dicom_rt', 'rt-utils', 'mock_data'), 'ct_*.dcm')):
        shutil.copy(path, tmp_path / 'a')
    found = scan_folder(str(tmp_path))
    assert sorted(len(v) for v in found.ct_series.values()) == [2, 3]
    with pytest.raises(DicomError, match='2 CT series, choose one with --series_uid'):
        read_ct_series(str(tmp_path))
    uid = next(u for u, v in found.ct_series.items() if len(v) == 3)
    assert read_ct_series(str(tmp_path), uid).image.GetSize() == (512, 512, 3)


def _small_series(folder, slices: int = 6):
    image = sitk.GetImageFromArray(np.zeros((slices, 8, 8), dtype=np.int16))
    image.SetSpacing((1.0, 1.0, 2.5))
    write_ct_series(image, str(folder), patient_id='GEOMETRY')
    files = sorted(glob.glob(os.path.join(folder, '*.dcm')),
                   key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    return files


def _edit(path, **changes):
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


@pytest.mark.parametrize('fault, message', [
    ('tilt', 'gantry tilt'), ('missing', '1 missing slice'), ('irregular', 'irregular slice spacing'),
    ('orientation', 'mixed slice orientations'), ('duplicate', 'two slices at the same position'),
    ('size', 'slices of different Rows')])
def test_geometry_faults_are_refused_with_the_reason(tmp_path, fault, message):
    files = _small_series(tmp_path)
    if fault == 'tilt':  # a tilted gantry shifts every slice sideways in proportion to its position
        for k, path in enumerate(files):
            _edit(path, ImagePositionPatient=[0, 2.5 * k * np.tan(np.radians(15)), 2.5 * k])
    elif fault == 'missing':
        os.remove(files[3])
    elif fault == 'irregular':
        _edit(files[3], ImagePositionPatient=[0, 0, 2.5 * 3 + 0.8])
    elif fault == 'orientation':
        _edit(files[2], ImageOrientationPatient=[1, 0, 0, 0, 0.9998477, 0.0174524])
    elif fault == 'duplicate':
        _edit(files[3], ImagePositionPatient=[0, 0, 2.5 * 2])
    elif fault == 'size':
        ds = pydicom.dcmread(files[1])
        ds.Rows, ds.PixelData = 4, np.zeros((4, 8), dtype=np.uint16).tobytes()
        ds.save_as(files[1])
    with pytest.raises(DicomError, match=message) as error:
        read_ct_series(str(tmp_path))
    assert str(tmp_path) in str(error.value)


def test_oblique_series_is_read_in_its_orientation_and_contoured_on_rectangular_pixels(tmp_path):
    series = read_ct_series(data('dicom_rt', 'rt-utils', 'oriented_data'))
    assert any('oblique' in w for w in series.warnings)
    row, column = (np.asarray(series.first.ImageOrientationPatient, float)[i:i + 3] for i in (0, 3))
    for k, header in enumerate(series.headers):  # voxel (x=3, y=2) of slice k is where the DICOM header says
        expected = np.asarray(header.ImagePositionPatient, float) + 3 * 2.5 * row + 2 * 3.5 * column
        assert np.allclose(series.image.TransformIndexToPhysicalPoint((3, 2, k)), expected, atol=1e-3)
    with pytest.raises(DicomError, match='no FrameOfReferenceUID'):
        write_rtstruct(series, [Roi('x', np.ones((3, 50, 100), bool))], str(tmp_path / 'rs.dcm'))
    assert not os.listdir(tmp_path)
    # with a frame of reference, the 100 x 50 grid of 2.5 x 3.5 mm pixels carries contours exactly
    for path in glob.glob(os.path.join(data('dicom_rt', 'rt-utils', 'oriented_data'), '*.dcm')):
        _edit_copy(path, tmp_path / 'ct', FrameOfReferenceUID='1.2.3.4.5', PatientID='OBLIQUE')
    series = read_ct_series(str(tmp_path / 'ct'))
    z, y, x = np.meshgrid(*[np.arange(n) for n in (3, 50, 100)], indexing='ij')
    ellipse = ((x - 40) * 2.5) ** 2 + ((y - 20) * 3.5) ** 2 <= 40 ** 2
    write_rtstruct(series, [Roi('GTV', ellipse, 'GTV')], str(tmp_path / 'rs.dcm'))
    assert np.array_equal(read_rtstruct(str(tmp_path / 'rs.dcm'), series).mask('GTV'), ellipse)
    assert _vertices_between_voxels(str(tmp_path / 'rs.dcm'), 'GTV', series.image, ellipse) == 1.0


def _edit_copy(path, folder, **changes):
    os.makedirs(folder, exist_ok=True)
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.save_as(os.path.join(folder, os.path.basename(path)))


def test_oblique_series_with_square_pixels_round_trips(tmp_path):
    """The oblique geometry rt-utils supports (square pixels): contours land on the mask in patient space."""
    angle = np.radians(20)
    direction = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    image = sitk.GetImageFromArray(np.zeros((10, 64, 64), dtype=np.int16))
    image.SetSpacing((1.5, 1.5, 3.0))
    image.SetDirection(tuple(direction.ravel()))
    write_ct_series(image, str(tmp_path / 'ct'), patient_id='OBLIQUE')
    series = read_ct_series(str(tmp_path / 'ct'))
    assert np.allclose(np.asarray(series.image.GetDirection()).reshape(3, 3), direction, atol=1e-5)
    z, y, x = np.meshgrid(*[np.arange(n) for n in (10, 64, 64)], indexing='ij')
    ball = ((x - 30) * 1.5) ** 2 + ((y - 34) * 1.5) ** 2 + ((z - 5) * 3.0) ** 2 <= 12 ** 2
    write_rtstruct(series, [Roi('GTV', ball, 'GTV')], str(tmp_path / 'rs.dcm'))
    back = read_rtstruct(str(tmp_path / 'rs.dcm'), series).mask('GTV')
    print(f"\nround-trip Dice, oblique (20 degrees) synthetic series, 12 mm ball: {_dice(back, ball):.5f}")
    assert _dice(back, ball) >= 0.95
    assert _vertices_between_voxels(str(tmp_path / 'rs.dcm'), 'GTV', series.image, ball) == 1.0


# --- RTSTRUCT ----------------------------------------------------------------------------------------------------

def test_rtstruct_of_20_slice_series_round_trips_liver(tmp_path):
    series = read_ct_series(data('ct_abdomen_example', 'example_ct_dicom'))
    labels = label_on_series_grid(sitk.ReadImage(data('ct_abdomen_example', 'example_seg_dicom.nii.gz')), series)
    liver = labels == LIVER
    assert liver.sum() > 100000
    path = str(tmp_path / 'rs.dcm')
    with pytest.raises(DicomError, match='empty StudyInstanceUID, SeriesInstanceUID, PatientID'):
        write_rtstruct(series, [Roi('Liver', liver)], path)  # the example is de-identified: no UIDs to copy
    assert not os.path.exists(path)
    warnings = write_rtstruct(series, [Roi('Liver', liver)], path, allow_missing_identity=True)
    assert any('empty' in w for w in warnings)
    back = read_rtstruct(path, series).mask('Liver')
    liver_dice = _dice(back, liver)
    print(f"\nround-trip Dice, 20-slice series, liver: {liver_dice:.5f} ({int(liver.sum())} voxels)")
    assert liver_dice >= 0.95
    assert _vertices_between_voxels(path, 'Liver', series.image, liver) == 1.0
    ds = pydicom.dcmread(path)
    assert ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == series.frame_of_reference_uid
    referenced = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0] \
        .RTReferencedSeriesSequence[0].ContourImageSequence
    assert [c.ReferencedSOPInstanceUID for c in referenced] == [h.SOPInstanceUID for h in series.headers]


def test_dicompyler_rtstruct_imports_on_its_ct():
    series = read_ct_series(data('dicom_rt', 'dicompyler'))
    path = data('dicom_rt', 'dicompyler', 'rtss.dcm')
    with pytest.raises(DicomError, match='437 contour\\(s\\) lie on slices that are not in the CT'):
        read_rtstruct(path, series)  # the folder holds 1 of the 98 slices the structure set was drawn on
    structures = read_rtstruct(path, series, allow_partial_series=True)
    assert structures.names()[:5] == ['BODY', 'Areola', 'Borders', 'Breast', 'Heart']
    body = next(r for r in structures.rois if r.name == 'BODY')
    assert body.interpreted_type == 'EXTERNAL' and body.contours == 141 and body.contours_on_series == 4
    assert all(not r.mask.any() for r in structures.rois if r.name != 'BODY')  # nothing else on this slice
    # the rasterised area matches the area the contours enclose (on this slice: four disjoint parts)
    ds = pydicom.dcmread(path)
    contours = [np.asarray(c.ContourData, float).reshape(-1, 3) for c in ds.ROIContourSequence[0].ContourSequence
                if c.ContourImageSequence[0].ReferencedSOPInstanceUID == series.first.SOPInstanceUID]
    enclosed = sum(_shoelace_area(c[:, :2]) for c in contours)
    pixel_area = float(np.prod(series.image.GetSpacing()[:2]))
    assert abs(body.mask.sum() * pixel_area - enclosed) / enclosed < 0.03


def test_rt_utils_rtstruct_imports_on_its_ct():
    series = read_ct_series(data('dicom_rt', 'rt-utils', 'mock_data'))
    structures = read_rtstruct(data('dicom_rt', 'rt-utils', 'mock_data', 'rt.dcm'), series)
    mask = structures.mask('ROI-1')
    assert mask[0].sum() > 1000 and mask[1].sum() == 0  # a square with a square hole, on the first slice
    assert any('frame of reference' in w for w in structures.warnings)


@pytest.mark.parametrize('name', ['invalid_reference_rt.dcm', 'non_existent_reference_rt.dcm'])
def test_broken_rt_utils_rtstructs_give_clear_errors(name):
    series = read_ct_series(data('dicom_rt', 'rt-utils', 'mock_data'))
    with pytest.raises(DicomError) as error:
        read_rtstruct(data('dicom_rt', 'rt-utils', 'mock_data', name), series)
    message = str(error.value)
    assert name in message and 'not in the CT' in message and '563423471.995.90' in message


def test_a_ct_file_is_not_taken_for_an_rtstruct():
    series = read_ct_series(data('dicom_rt', 'rt-utils', 'mock_data'))
    with pytest.raises(DicomError, match='not an RTSTRUCT'):
        read_rtstruct(data('dicom_rt', 'rt-utils', 'mock_data', 'ct_1.dcm'), series)


# --- DICOM SEG ---------------------------------------------------------------------------------------------------

def test_dicom_seg_round_trips_and_reads_dcmqi_seg(tmp_path):
    series = read_ct_series(data('dicom_rt', 'dcmqi', 'ct-3slice'))
    liver = label_on_series_grid(sitk.ReadImage(data('dicom_rt', 'dcmqi', 'liver_seg.nrrd')), series) == 1
    assert liver.sum() > 100000
    theirs = read_dicom_seg(data('dicom_rt', 'dcmqi', 'liver.dcm'), series)
    assert len(theirs) == 1 and _dice(next(iter(theirs.values())), liver) == 1.0
    path = str(tmp_path / 'seg.dcm')
    write_dicom_seg(series, [Roi('Liver', liver), Roi('empty', np.zeros_like(liver))], path)
    back = read_dicom_seg(path, series)
    assert list(back) == ['Liver'] and np.array_equal(back['Liver'], liver)
    ds = pydicom.dcmread(path)
    assert (ds.PatientID, ds.StudyInstanceUID, ds.FrameOfReferenceUID) == \
        (series.patient_id, series.study_uid, series.frame_of_reference_uid)
    rtstruct = str(tmp_path / 'rs.dcm')
    write_rtstruct(series, [Roi('Liver', liver)], rtstruct)
    liver_dice = _dice(read_rtstruct(rtstruct, series).mask('Liver'), liver)
    print(f"\nround-trip Dice, dcmqi 3-slice series, liver: RTSTRUCT {liver_dice:.5f}, SEG 1.0")
    assert liver_dice >= 0.95
