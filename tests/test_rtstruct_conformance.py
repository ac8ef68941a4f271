"""RTSTRUCT and SEG as readers we did not write see them: dciodvfy (dicom3tools) and plastimatch, both from Debian.

The cases are the benchmark's (``bench/rtstruct_readers.py``): the real 20-slice abdominal CT of
``../shared/data/ct_abdomen_example`` with the TotalSegmentator liver and GTV / CTV / PTV grown in it, a fragmented
liver (holes, islands, one-voxel specks) and an oblique synthetic series. Failing, not skipping, when the shared
data or a reader is missing.
"""
import os
import shutil
import sys

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from nnunet_ras.dicom.contours import mask_to_polygons, polygons_to_mask
from nnunet_ras.dicom.phantom import write_phantom_patients
from nnunet_ras.dicom.readers import dciodvfy
from nnunet_ras.dicom.series import label_on_series_grid, read_ct_series

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'bench'))
import rtstruct_readers as cases  # noqa: E402

EXAMPLE = os.path.join(cases.SHARED_DATA, 'ct_abdomen_example')


@pytest.fixture(scope='module', autouse=True)
def readers_installed():
    for tool in ('dciodvfy', 'plastimatch'):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: `make install` installs Debian's dicom3tools and plastimatch")


@pytest.fixture(scope='module')
def real_ct(tmp_path_factory):
    if not os.path.isdir(EXAMPLE):
        pytest.fail(f"test data {EXAMPLE} is missing: these tests need ../shared/data next to the repository")
    folder = cases.reidentified_copy(os.path.join(EXAMPLE, 'example_ct_dicom'), str(tmp_path_factory.mktemp('ct')))
    series = read_ct_series(folder)
    liver = label_on_series_grid(sitk.ReadImage(os.path.join(EXAMPLE, 'example_seg_dicom.nii.gz')), series) == \
        cases.LIVER
    return series, liver


def _random_masks(count: int, seed: int = 0):
    """Blobs with holes, islands in holes, diagonal touches and specks, up to the image border."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        shape = tuple(rng.integers(5, 40, 2))
        noise = rng.random(shape)
        mask = noise < rng.uniform(0.2, 0.8)
        if rng.random() < 0.5:  # smoother shapes with rings too
            y, x = np.indices(shape)
            cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(2, 15)
            d = np.hypot(y - cy, x - cx)
            mask = ((d < r) & (d > r / 2)) | (noise < 0.05)
        yield mask


def _union(polygons, shape):
    out = np.zeros(shape, bool)
    for polygon in polygons:
        out |= polygons_to_mask([polygon], shape)
    return out


def test_contours_read_back_exactly_under_union_and_xor():
    """Every slice mask comes back voxel for voxel whether a reader ORs a slice's contours (plastimatch's default)
    or XORs them (the DICOM XOR technique); no contour is degenerate."""
    for mask in _random_masks(300):
        polygons = mask_to_polygons(mask)
        assert np.array_equal(polygons_to_mask(polygons, mask.shape), mask)
        assert np.array_equal(_union(polygons, mask.shape), mask)
        for polygon in polygons:
            assert len(polygon) >= 3
            r, c = polygon[:, 0], polygon[:, 1]
            assert abs(np.dot(c, np.roll(r, -1)) - np.dot(r, np.roll(c, -1))) > 0


def test_a_ring_is_one_keyholed_contour_and_a_speck_a_diamond():
    ring = np.zeros((12, 12), bool)
    ring[2:10, 2:10] = True
    ring[4:8, 4:8] = False
    ring[5, 5] = True  # an island in the hole: a region of its own
    polygons = mask_to_polygons(ring)
    assert len(polygons) == 2
    speck = min(polygons, key=len)
    assert np.allclose(sorted(map(tuple, speck)), [(4.5, 5), (5, 4.5), (5, 5.5), (5.5, 5)])


@pytest.mark.shared_data
def test_real_ct_rtstruct_and_seg_conform_and_plastimatch_agrees(real_ct, tmp_path):
    series, liver = real_ct
    structures = cases.target_volumes(series, liver, np.argwhere(liver).mean(axis=0))
    structures['LiverFragmented'] = cases.fragmented(liver)
    rows = cases.check_case('real', series, structures, str(tmp_path))
    for row in rows:
        print(f"\n{row['roi']}: {row['cc']:.1f} cc, plastimatch Dice {row['plastimatch']:.4f}, "
              f"read_rtstruct Dice {row['ours']:.4f}, {row['contours']} contours")
    assert rows[0]['rs_errors'] == 0 and rows[0]['seg_errors'] == 0, rows[0]['first_errors']
    assert rows[0]['degenerate'] == 0
    for row in rows:
        assert row['cc'] >= 1 and row['plastimatch'] >= 0.98, row
        assert row['ours'] == 1.0, row
    ds = pydicom.dcmread(os.path.join(tmp_path, 'real', 'RTSTRUCT.dcm'))
    assert ds.FrameOfReferenceUID == series.frame_of_reference_uid
    assert all(len(str(v)) <= 16 for roi in ds.ROIContourSequence for c in roi.ContourSequence
               for v in c.ContourData)


def test_oblique_series_conforms_and_plastimatch_agrees(tmp_path):
    series = cases.oblique_series(str(tmp_path / 'ct'))
    rows = cases.check_case('oblique', series, cases.oblique_structures(series), str(tmp_path))
    assert rows[0]['rs_errors'] == 0 and rows[0]['seg_errors'] == 0, rows[0]['first_errors']
    assert rows[0]['degenerate'] == 0
    for row in rows:
        print(f"\n{row['roi']}: {row['cc']:.1f} cc, plastimatch Dice {row['plastimatch']:.4f}")
        assert row['plastimatch'] >= 0.98 and row['ours'] == 1.0, row


def test_phantom_ct_series_and_its_rtstruct_conform(tmp_path):
    patient = write_phantom_patients(str(tmp_path), 1, seed=3)[0]
    ct = sorted(os.listdir(os.path.join(patient, 'CT')))
    for path in [os.path.join(patient, 'CT', ct[0]), os.path.join(patient, 'RS_plan.dcm')]:
        result = dciodvfy(path)
        assert result.errors == [], result.errors


def test_roi_names_and_character_sets(tmp_path):
    """ROI names a planning system cannot hold are refused before anything is written; the structure set keeps the
    CT's character set, so a UTF-8 patient name and ROI name survive."""
    from nnunet_ras.dicom import DicomError
    from nnunet_ras.dicom.rtstruct import Roi, read_rtstruct, write_rtstruct
    series = cases.oblique_series(str(tmp_path / 'ct'))
    mask = np.zeros(tuple(reversed(series.image.GetSize())), bool)
    mask[10:14, 30:50, 30:50] = True
    for name, message in [('x' * 65, '65 characters'), ('GTV\\1', 'backslash'), ('肝臓', 'cannot hold'),
                          ('  ', 'empty')]:
        with pytest.raises(DicomError, match=message):
            write_rtstruct(series, [Roi(name, mask)], str(tmp_path / 'rs.dcm'))
    with pytest.raises(DicomError, match='repeat'):
        write_rtstruct(series, [Roi('GTV', mask), Roi('GTV', mask)], str(tmp_path / 'rs.dcm'))
    assert not os.path.exists(tmp_path / 'rs.dcm')

    for path in sorted(os.listdir(tmp_path / 'ct')):  # the same CT, in UTF-8
        ds = pydicom.dcmread(tmp_path / 'ct' / path)
        ds.SpecificCharacterSet, ds.PatientName = 'ISO_IR 192', 'Müller^Jörg'
        ds.save_as(tmp_path / 'ct' / path)
    series = read_ct_series(str(tmp_path / 'ct'))
    write_rtstruct(series, [Roi('肝臓', mask)], str(tmp_path / 'rs.dcm'))
    written = pydicom.dcmread(tmp_path / 'rs.dcm')
    assert written.SpecificCharacterSet == 'ISO_IR 192' and str(written.PatientName) == 'Müller^Jörg'
    assert np.array_equal(read_rtstruct(str(tmp_path / 'rs.dcm'), series).mask('肝臓'), mask)
    assert dciodvfy(str(tmp_path / 'rs.dcm')).errors == []
