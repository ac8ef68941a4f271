"""The label-noise simulator (corrupt-labels) and the JSRT converter, on real computations and the real JSRT data."""
import filecmp
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import TINY

from nnunet_ras.cli import main
from nnunet_ras.dataset_checks import DatasetError, check_raw_dataset
from nnunet_ras.noise.corrupt import MANIFEST_NAME, corrupt_dataset, corrupt_label_map
from nnunet_ras.noise.jsrt import convert_jsrt
from nnunet_ras.phantom import write_phantom_dataset

JSRT = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data', 'jsrt_scr_256')


def _files(folder: str) -> list:
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def _same_bytes(a: str, b: str) -> bool:
    return filecmp.cmp(a, b, shallow=False)


@pytest.fixture
def phantom(workspace):
    """Dataset990_TinyPhantom (3D NIfTI, labels liver 1 / tumour 2): 6 training and 2 test cases."""
    return write_phantom_dataset(workspace.path('nnUNet_raw'), 990, 'TinyPhantom', num_train=6, num_test=2,
                                 seed=1, geometry=TINY)


def _square(size: int = 101, half: int = 20) -> np.ndarray:
    seg = np.zeros((size, size), np.uint8)
    seg[size // 2 - half:size // 2 + half + 1, size // 2 - half:size // 2 + half + 1] = 1
    return seg


def test_fraction_untouched_files_and_geometry(phantom):
    target = corrupt_dataset('990', 991, 'TinyNoisy', 0.5, (1, 3), seed=0)
    assert os.path.basename(target) == 'Dataset991_TinyNoisy'
    manifest = json.load(open(os.path.join(target, MANIFEST_NAME)))
    corrupted = {c for c, r in manifest['cases'].items() if r['corrupted']}
    assert len(manifest['cases']) == 6 and len(corrupted) == manifest['num_corrupted'] == 3
    differing = {f[:-7] for f in os.listdir(os.path.join(phantom, 'labelsTr'))
                 if not _same_bytes(os.path.join(phantom, 'labelsTr', f), os.path.join(target, 'labelsTr', f))}
    assert differing == corrupted
    for sub in ('imagesTr', 'imagesTs', 'labelsTs'):
        names = os.listdir(os.path.join(phantom, sub))
        assert sorted(names) == sorted(os.listdir(os.path.join(target, sub)))
        assert all(_same_bytes(os.path.join(phantom, sub, n), os.path.join(target, sub, n)) for n in names)
    for case in corrupted:
        old = sitk.ReadImage(os.path.join(phantom, 'labelsTr', case + '.nii.gz'))
        new = sitk.ReadImage(os.path.join(target, 'labelsTr', case + '.nii.gz'))
        assert (old.GetSize(), old.GetSpacing(), old.GetOrigin(), old.GetDirection(), old.GetPixelID()) == \
               (new.GetSize(), new.GetSpacing(), new.GetOrigin(), new.GetDirection(), new.GetPixelID())
        for name, record in manifest['cases'][case]['labels'].items():
            assert 1 <= record['radius'] <= 3 and record['operation'] in ('dilate', 'erode')
            assert record['voxels_after'] == int((sitk.GetArrayFromImage(new) == record['value']).sum())
            assert record['voxels_after'] > 0
    dataset_json = json.load(open(os.path.join(target, 'dataset.json')))
    assert dataset_json['name'] == 'TinyNoisy' and 'label_noise' in dataset_json
    assert len(check_raw_dataset(target)) == 6  # still a valid nnU-Net raw data set, labels on the image grid
    assert not [d for d in os.listdir(os.path.dirname(target)) if d.startswith('.tmp_')]
    # round(f * n) rounded half up: 0.25 * 6 = 1.5 -> 2
    quarter = corrupt_dataset('Dataset990_TinyPhantom', 992, 'TinyQuarter', 0.25, (1, 2), seed=0)
    assert json.load(open(os.path.join(quarter, MANIFEST_NAME)))['num_corrupted'] == 2


def test_same_seed_same_bytes_other_seed_differs(phantom):
    a = corrupt_dataset('990', 993, 'A', 0.5, (1, 4), shift=True, seed=7)
    b = corrupt_dataset('990', 994, 'B', 0.5, (1, 4), shift=True, seed=7)
    c = corrupt_dataset('990', 995, 'C', 0.5, (1, 4), shift=True, seed=8)
    assert _files(a) == _files(b) == _files(c)
    for f in _files(a):
        if f != 'dataset.json':  # holds the new name
            assert _same_bytes(os.path.join(a, f), os.path.join(b, f)), f
    cases = [json.load(open(os.path.join(x, MANIFEST_NAME)))['cases'] for x in (a, c)]
    assert cases[0] != cases[1]
    assert any(not _same_bytes(os.path.join(a, f), os.path.join(c, f)) for f in _files(a) if 'labelsTr' in f)


@pytest.mark.parametrize('operation', ['dilate', 'erode'])
def test_boundary_moves_by_the_recorded_radius(operation):
    seg = _square()
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(20):
        new, records = corrupt_label_map(seg, [1], rng, (5, 13), [operation])
        record = records[1]
        assert record['operation'] == operation and 5 <= record['radius'] <= 13 and record['fallback'] is None
        seen.add(record['radius'])
        row = new[50]  # the square spans columns 30..70 on its central row
        width = int(row.sum())
        assert width == 41 + (2 if operation == 'dilate' else -2) * record['radius']
        assert row[50 - width // 2] == 1 and row[50 + width // 2] == 1
    assert len(seen) > 3  # radii are drawn, not fixed


def test_erosion_never_empties_a_structure():
    rng = np.random.default_rng(0)
    small = np.zeros((21, 21), np.uint8)
    small[9:12, 9:12] = 1  # 3 x 3: erosion by 1 keeps the centre, by more empties it
    new, records = corrupt_label_map(small, [1], rng, (5, 8), ['erode'])
    assert records[1]['operation'] == 'erode' and records[1]['radius'] == 1 and records[1]['fallback']
    assert new.sum() == records[1]['voxels_after'] == 1
    dot = np.zeros((21, 21), np.uint8)
    dot[10, 10] = 1  # one voxel thin: no erosion keeps anything, so it is dilated instead
    new, records = corrupt_label_map(dot, [1], rng, (2, 2), ['erode'])
    assert records[1]['operation'] == 'dilate' and 'dilated instead' in records[1]['fallback']
    assert new.sum() == records[1]['voxels_after'] == 13  # the disc of radius 2


def test_dilation_grows_into_background_only_and_shift_translates():
    seg = np.zeros((60, 60), np.uint8)
    seg[10:30, 10:30] = 1
    seg[10:30, 30:50] = 2  # touches label 1
    seg[0:5, 0:5] = 3      # not selected: never overwritten
    new, records = corrupt_label_map(seg, [1, 2], np.random.default_rng(0), (4, 4), ['dilate'])
    assert (new[seg == 2] == 2).all() and (new[seg == 1] == 1).all() and (new[seg == 3] == 3).all()
    assert records[1]['voxels_after'] > 400 and records[2]['voxels_after'] > 400
    # a background voxel reachable by both goes to the nearer structure: left of the border to 1, right to 2
    assert new[32, 25] == 1 and new[32, 35] == 2
    shifted, records = corrupt_label_map(_square(), [1], np.random.default_rng(3), (6, 6), ['dilate'], shift=True)
    vector = np.array(records[1]['shift'])
    assert 5 <= np.linalg.norm(vector) <= 7
    dilated, _ = corrupt_label_map(_square(), [1], np.random.default_rng(3), (6, 6), ['dilate'])
    assert np.array_equal(np.argwhere(shifted).mean(0), np.argwhere(dilated).mean(0) + vector)


@pytest.mark.shared_data
def test_jsrt_to_dataset_and_2d_png_corruption(workspace, capsys):
    from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
    raw = workspace.path('nnUNet_raw')
    assert main(['jsrt-to-dataset', '-i', JSRT, '-d', '801', '-structures', 'lungs', 'clavicles',
                 '-size', '64']) == 0
    lungs, clavicles = os.path.join(raw, 'Dataset801_JSRTLungs'), os.path.join(raw, 'Dataset803_JSRTClavicles')
    assert sorted(os.listdir(raw)) == ['Dataset801_JSRTLungs', 'Dataset803_JSRTClavicles']
    dataset_json = json.load(open(os.path.join(lungs, 'dataset.json')))
    assert dataset_json['channel_names'] == {'0': 'rescale_to_0_1'} and dataset_json['file_ending'] == '.png'
    assert dataset_json['numTraining'] == 100 and len(os.listdir(os.path.join(lungs, 'imagesTs'))) == 100
    assert sorted(os.listdir(os.path.join(lungs, 'labelsTs'))) == \
        sorted(os.listdir(os.path.join(clavicles, 'labelsTs')))  # one split for every structure
    assert len(check_raw_dataset(lungs)) == 100
    io = NaturalImage2DIO()
    case = sorted(os.listdir(os.path.join(lungs, 'labelsTr')))[0]
    seg, _ = io.read_seg(os.path.join(lungs, 'labelsTr', case))
    image, _ = io.read_images([os.path.join(lungs, 'imagesTr', case[:-4] + '_0000.png')])
    assert seg.shape == image.shape == (1, 1, 64, 64) and set(np.unique(seg)) == {0, 1} and image.max() > 100

    assert main(['corrupt-labels', '-d', '801', '-o', '811', '-name', 'JSRTLungsNoisy', '-fraction', '0.25',
                 '-radius', '1', '8', '-seed', '0']) == 0
    noisy = os.path.join(raw, 'Dataset811_JSRTLungsNoisy')
    manifest = json.load(open(os.path.join(noisy, MANIFEST_NAME)))
    corrupted = {c for c, r in manifest['cases'].items() if r['corrupted']}
    assert len(corrupted) == 25
    changed = {f[:-4] for f in os.listdir(os.path.join(lungs, 'labelsTr'))
               if not _same_bytes(os.path.join(lungs, 'labelsTr', f), os.path.join(noisy, 'labelsTr', f))}
    assert changed == corrupted
    for sub in ('imagesTr', 'imagesTs', 'labelsTs'):
        assert all(_same_bytes(os.path.join(lungs, sub, f), os.path.join(noisy, sub, f))
                   for f in os.listdir(os.path.join(lungs, sub)))
    for c in corrupted:
        seg, _ = io.read_seg(os.path.join(noisy, 'labelsTr', c + '.png'))
        record = manifest['cases'][c]['labels']['lungs']
        assert set(np.unique(seg)) <= {0, 1} and int(seg.sum()) == record['voxels_after'] > 0
        assert 1 <= record['radius'] <= 8

    assert main(['corrupt-labels', '-d', '801', '-o', '811', '-name', 'Again', '-fraction', '0.5', '-radius', '1',
                 '8']) == 2
    assert 'Dataset811_JSRTLungsNoisy' in capsys.readouterr().err


def test_bad_input_is_refused_naming_the_file(phantom, workspace):
    raw = workspace.path('nnUNet_raw')
    with pytest.raises(DatasetError, match='not found'):
        corrupt_dataset('123', 991, 'X', 0.5, (1, 2))
    with pytest.raises(DatasetError, match='Dataset990_TinyPhantom'):
        corrupt_dataset('990', 990, 'X', 0.5, (1, 2))  # the target id is taken
    with pytest.raises(DatasetError, match='-radius'):
        corrupt_dataset('990', 991, 'X', 0.5, (5, 2))
    with pytest.raises(DatasetError, match='no foreground label'):
        corrupt_dataset('990', 991, 'X', 0.5, (1, 2), labels=['spleen'])
    broken_label = sorted(os.listdir(os.path.join(phantom, 'labelsTr')))[0]
    with open(os.path.join(phantom, 'labelsTr', broken_label), 'wb') as f:
        f.write(b'not an image')
    with pytest.raises(DatasetError, match=broken_label):
        corrupt_dataset('990', 991, 'X', 1.0, (1, 2))
    assert sorted(os.listdir(raw)) == ['Dataset990_TinyPhantom']  # nothing half-written left behind
    with open(os.path.join(phantom, 'dataset.json'), 'w') as f:
        f.write('{"labels": ')
    with pytest.raises(DatasetError, match='dataset.json'):
        corrupt_dataset('990', 991, 'X', 0.5, (1, 2))
    with pytest.raises(DatasetError, match=os.path.join(raw, 'images')):
        convert_jsrt(raw, raw, 801)
