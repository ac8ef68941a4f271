"""``nnunet-ras evaluate`` on files written here, and ``nnunet-ras compare`` on two real nnU-Net results folders."""
import csv
import json
import math
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_ras.cli import main

SPACING_XYZ = (0.8, 0.8, 3.0)


def _write(path: str, array: np.ndarray, spacing=SPACING_XYZ, origin=(0.0, 0.0, 0.0)) -> str:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    sitk.WriteImage(image, path)
    return path


@pytest.fixture
def folders(tmp_path):
    """Two cases (z, y, x arrays, spacing 0.8 x 0.8 x 3 mm). case_a: label 1 two plates 2 slices apart, label 2
    predicted where there is none; case_b: label 1 exact, label 2 missed."""
    ref, pred = tmp_path / 'ref', tmp_path / 'pred'
    ref.mkdir(), pred.mkdir()
    a_ref, a_pred = np.zeros((6, 5, 5)), np.zeros((6, 5, 5))
    a_ref[1], a_pred[3] = 1, 1
    a_pred[5, 0, 0] = 2
    b_ref = np.zeros((6, 5, 5))
    b_ref[2:4, 1:3, 1:3] = 1
    b_pred = b_ref.copy()
    b_ref[0, 0, 0] = 2
    for case, r, p in (('case_a', a_ref, a_pred), ('case_b', b_ref, b_pred)):
        _write(str(ref / f'{case}.nii.gz'), r)
        _write(str(pred / f'{case}.nii.gz'), p)
    return str(ref), str(pred)


def _rows(path: str):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_evaluate_writes_json_and_csv_with_hand_computed_values(folders, tmp_path, capsys):
    ref, pred = folders
    dataset_json = tmp_path / 'dataset.json'
    dataset_json.write_text(json.dumps({'labels': {'background': 0, 'liver': 1, 'tumour': 2},
                                        'file_ending': '.nii.gz'}))
    assert main(['evaluate', '-ref', ref, '-pred', pred, '-djfile', str(dataset_json)]) == 0
    assert 'liver' in capsys.readouterr().out
    result = json.load(open(os.path.join(pred, 'metrics.json')))
    liver_a = result['cases']['case_a']['metrics']['liver']
    assert liver_a['DSC'] == 0 and liver_a['RVE'] == 0
    assert liver_a['HD95'] == pytest.approx(6.0, abs=1e-4) and liver_a['ASSD'] == pytest.approx(6.0, abs=1e-4)
    tumour_a = result['cases']['case_a']['metrics']['tumour']  # empty reference, one predicted voxel
    assert tumour_a['DSC'] == 0 and tumour_a['precision'] == 0
    assert tumour_a['recall'] is None and tumour_a['HD95'] is None and tumour_a['RVE'] is None  # NaN -> null
    assert tumour_a['prediction_volume_mm3'] == pytest.approx(0.8 * 0.8 * 3)
    tumour_b = result['cases']['case_b']['metrics']['tumour']  # missed
    assert tumour_b['DSC'] == 0 and tumour_b['recall'] == 0 and tumour_b['RVE'] == 100
    assert tumour_b['precision'] is None and tumour_b['ASSD'] is None

    summary = result['summary']
    assert summary['liver']['DSC'] == {'mean': 0.5, 'std': pytest.approx(math.sqrt(0.5)), 'median': 0.5,
                                       'min': 0.0, 'max': 1.0, 'n': 2, 'n_nan': 0}
    assert summary['liver']['HD95']['mean'] == pytest.approx(3.0, abs=1e-4)
    assert summary['tumour']['HD95']['n'] == 0 and summary['tumour']['HD95']['mean'] is None
    assert summary['tumour']['recall']['n'] == 1 and summary['tumour']['recall']['mean'] == 0
    assert result['labels'] == {'liver': 1, 'tumour': 2}

    rows = _rows(os.path.join(pred, 'metrics.csv'))
    assert [(r['case'], r['label']) for r in rows] == [('case_a', 'liver'), ('case_a', 'tumour'),
                                                      ('case_b', 'liver'), ('case_b', 'tumour')]
    assert float(rows[0]['HD95_mm']) == pytest.approx(6.0, abs=1e-4)
    assert rows[1]['recall'] == 'nan' and float(rows[3]['RVE_percent']) == 100


def test_evaluate_labels_option_and_output_paths(folders, tmp_path):
    ref, pred = folders
    out_json, out_csv = str(tmp_path / 'out' / 's.json'), str(tmp_path / 'out' / 'c.csv')
    assert main(['evaluate', '-ref', ref, '-pred', pred, '-l', '1', '-o', out_json, '--csv', out_csv]) == 0
    result = json.load(open(out_json))
    assert list(result['labels']) == ['label_1']
    assert result['cases']['case_b']['metrics']['label_1']['DSC'] == 1
    assert result['cases']['case_b']['spacing'] == pytest.approx(SPACING_XYZ)
    assert len(_rows(out_csv)) == 2
    assert not [f for f in os.listdir(tmp_path / 'out') if f.startswith('.')]  # no temporary files left
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(out_json).st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not mkstemp's private one


def test_evaluate_2d_png_with_file_ending_from_dataset_json(tmp_path):
    ref, pred = tmp_path / 'ref', tmp_path / 'pred'
    ref.mkdir(), pred.mkdir()
    r, p = np.zeros((8, 8)), np.zeros((8, 8))
    r[2, 2], p[5, 6] = 1, 1  # 3 rows and 4 columns apart, 1 mm pixels (PNG has no spacing)
    _write(str(ref / 'x.png'), r, spacing=(1.0, 1.0), origin=(0.0, 0.0))
    _write(str(pred / 'x.png'), p, spacing=(1.0, 1.0), origin=(0.0, 0.0))
    (tmp_path / 'dataset.json').write_text(json.dumps({'labels': {'background': 0, 'spot': 1}, 'file_ending': '.png'}))
    assert main(['evaluate', '-ref', str(ref), '-pred', str(pred), '-djfile', str(tmp_path / 'dataset.json')]) == 0
    spot = json.load(open(pred / 'metrics.json'))['cases']['x']['metrics']['spot']
    assert spot['HD95'] == pytest.approx(5.0, abs=1e-4) and spot['ASSD'] == pytest.approx(5.0, abs=1e-4)


@pytest.mark.parametrize('problem', ['missing', 'spacing', 'size', 'origin', 'unreadable'])
def test_evaluate_bad_input_names_file_and_problem(folders, problem, capsys):
    ref, pred = folders
    target = os.path.join(pred, 'case_b.nii.gz')
    if problem == 'missing':
        os.remove(target)
    elif problem == 'spacing':
        _write(target, np.zeros((6, 5, 5)), spacing=(0.8, 0.8, 2.5))
    elif problem == 'size':
        _write(target, np.zeros((6, 5, 4)))
    elif problem == 'origin':
        _write(target, np.zeros((6, 5, 5)), origin=(0.0, 0.0, 10.0))
    else:
        with open(target, 'wb') as f:
            f.write(b'not an image')
    assert main(['evaluate', '-ref', ref, '-pred', pred]) == 2
    err = capsys.readouterr().err
    assert err.startswith('nnunet-ras: error: ') and target in err
    assert {'missing': 'missing', 'spacing': 'spacing', 'size': 'size', 'origin': 'origin',
            'unreadable': 'cannot be read'}[problem] in err
    assert not os.path.exists(os.path.join(pred, 'metrics.json'))


DATASET = '990'
TRAINERS = ('nnUNetTrainer_1epoch_5iters', 'nnUNetTrainerRAS_1epoch_5iters')


@pytest.fixture(scope='module')
def trained(tiny_phantom):
    """Stock planning and fold 0 of nnU-Net's default network and of RAS U-Net, one epoch of 5 iterations each."""
    ws = tiny_phantom
    ws.run(['nnUNetv2_plan_and_preprocess', '-d', DATASET, '-c', '3d_fullres', '-np', '1', '-npfp', '1'],
           step='compare: nnUNetv2_plan_and_preprocess')
    for trainer in TRAINERS:
        ws.run(['nnUNetv2_train', DATASET, '3d_fullres', '0', '-tr', trainer, '-device', 'cpu'],
               step=f'compare: nnUNetv2_train {trainer} fold 0')
    return ws


def _fold0(ws, trainer: str, *parts: str) -> str:
    return ws.path('nnUNet_results', 'Dataset990_TinyPhantom', f'{trainer}__nnUNetPlans__3d_fullres', 'fold_0', *parts)


@pytest.mark.e2e
def test_compare_two_real_results_folders(trained):
    ws = trained
    out = os.path.join(ws.root, 'comparison')
    result = ws.run(['nnunet-ras', 'compare', '-d', DATASET, '-c', '3d_fullres', '-tr', *TRAINERS, '-f', '0',
                     '-o', out], step='nnunet-ras compare (2 trainers, fold 0)')
    assert '| nnUNetTrainer_1epoch_5iters (reference) |' in result.stdout
    markdown = open(os.path.join(out, 'comparison.md')).read()
    assert markdown.strip() in result.stdout and '### liver' in markdown and '### tumour' in markdown

    validation_cases = sorted(f[:-7] for f in os.listdir(_fold0(ws, TRAINERS[0], 'validation'))
                              if f.endswith('.nii.gz'))
    assert validation_cases
    rows = _rows(os.path.join(out, 'comparison.csv'))
    assert len(rows) == 2 * 2 * 6  # trainers x labels x metrics
    for trainer in TRAINERS:
        weights = torch.load(_fold0(ws, trainer, 'checkpoint_final.pth'), map_location='cpu',
                             weights_only=False)['network_weights']
        expected = sum(v.numel() for k, v in weights.items() if not k.endswith(('running_mean', 'running_var',
                                                                                 'num_batches_tracked')))
        mine = [r for r in rows if r['trainer'] == trainer]
        assert {int(r['parameters']) for r in mine} == {expected}
        assert all(int(r['n_cases']) == len(validation_cases) for r in mine)
        assert all(0 < float(r['seconds_per_epoch']) < 600 and r['epochs'] == '1' for r in mine)
        for r in mine:
            if r['metric'] in ('DSC', 'precision', 'recall') and r['n'] != '0':
                assert 0 <= float(r['mean']) <= 1
    assert len({r['parameters'] for r in rows}) == 2  # RAS U-Net and the default network differ
    tested = [r for r in rows if r['trainer'] == TRAINERS[1]]
    for r in tested:
        assert r['reference_trainer'] == TRAINERS[0]
        if int(r['n_pairs']) > 0:
            assert 0 <= float(r['p_value']) <= 1
    assert any(int(r['n_pairs']) == len(validation_cases) for r in tested)

    cases = _rows(os.path.join(out, 'cases.csv'))
    assert len(cases) == 2 * 2 * len(validation_cases)
    assert {r['case'] for r in cases} == set(validation_cases) and {r['fold'] for r in cases} == {'0'}
    for metric in ('DSC', 'ASSD', 'HD95', 'RVE', 'precision', 'recall'):
        with open(os.path.join(out, f'boxplot_{metric}.png'), 'rb') as f:
            assert f.read(8) == b'\x89PNG\r\n\x1a\n'


@pytest.mark.e2e
def test_compare_missing_fold_is_named(trained):
    result = trained.run(['nnunet-ras', 'compare', '-d', DATASET, '-c', '3d_fullres', '-tr', *TRAINERS,
                          '-f', '0', '1', '-o', os.path.join(trained.root, 'unused')], check=False)
    assert result.returncode == 2
    assert _fold0(trained, TRAINERS[0])[:-1] + '1' in result.stderr and 'missing' in result.stderr
    assert not os.path.exists(os.path.join(trained.root, 'unused'))
