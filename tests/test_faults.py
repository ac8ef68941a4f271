"""Fault injection: bad input, misuse and interruption, built on the fly from the phantom and ``../shared/data``.

One section per class of the reliability issue: (1) reads that verify, (2) no NumPy view of a freed SimpleITK
image, (3) every check before inference, (4) no silent overwrite or mixing, one id claim, (5) interruption leaves
nothing that looks complete, (6) geometry that cannot be right, (7) a one-line error and exit 2 for user mistakes.

The predict checks use a model folder whose checkpoint is not a checkpoint: a check that ran after loading the model
would fail with an internal error (exit 1), not the one-line refusal (exit 2) these tests require.
"""
import ast
import glob
import gzip
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from hypothesis import HealthCheck, given, settings, strategies as st

import nnunet_ras
from conftest import TINY
from nnunet_ras._io import atomic_folder, read_image, remove_stale_parts, write_atomically
from nnunet_ras.cli import main
from nnunet_ras.dataset_checks import check_raw_dataset
from nnunet_ras.dataset_ids import claim_dataset
from nnunet_ras.dicom import DicomError
from nnunet_ras.dicom.margins import apply_margins, margin_warnings, parse_margin
from nnunet_ras.dicom.phantom import write_phantom_patients
from nnunet_ras.dicom.predict import case_name
from nnunet_ras.dicom.rtstruct import read_rtstruct
from nnunet_ras.dicom.series import read_ct_series
from nnunet_ras.errors import DatasetError, UserInputError
from nnunet_ras.phantom import write_phantom_dataset

DATA = os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data')
HIPPOCAMPUS = os.path.join(DATA, 'Dataset004_Hippocampus')
LABELS = ['liver=Liver,LIVER', 'gtv=GTV,gtv_1']


def _phantom(workspace, dataset_id=991, n=5):
    return write_phantom_dataset(workspace.env['nnUNet_raw'], dataset_id, 'Broken', num_train=n, num_test=0,
                                 geometry=TINY)


def _plan(capsys, dataset_id='991'):
    code = main(['plan_and_preprocess', '-d', dataset_id, '-c', '3d_fullres', '-np', '1', '-npfp', '1', '--no_pbar'])
    return code, capsys.readouterr().err


def _rewrite(path, array, like=None):
    image = sitk.GetImageFromArray(array)
    if like is not None:
        image.CopyInformation(like)
    sitk.WriteImage(image, path)


def _fake_model(root, channel='CT', patch_size=(16, 48, 48)) -> str:
    """A model folder that passes the folder checks but whose checkpoint cannot be loaded."""
    folder = os.path.join(str(root), 'Dataset990_Fake', 'nnUNetTrainer__nnUNetPlans__3d_fullres')
    os.makedirs(os.path.join(folder, 'fold_0'))
    with open(os.path.join(folder, 'plans.json'), 'w') as f:
        json.dump({'configurations': {'3d_fullres': {'patch_size': list(patch_size)}}}, f)
    with open(os.path.join(folder, 'dataset.json'), 'w') as f:
        json.dump({'channel_names': {'0': channel}, 'labels': {'background': 0, 'liver': 1, 'tumour': 2},
                   'numTraining': 1, 'file_ending': '.nii.gz'}, f)
    with open(os.path.join(folder, 'fold_0', 'checkpoint_final.pth'), 'wb') as f:
        f.write(b'not a checkpoint')
    return folder


def _predict(capsys, input_path, out, model, *extra):
    code = main(['predict', '-i', input_path, '-o', out, '-m', model, '-f', '0', '-device', 'cpu', *extra])
    captured = capsys.readouterr()
    return code, captured.err


def _ct_patient(tmp_path, **changes) -> str:
    """A phantom DICOM CT series (no RTSTRUCT) with the given header attributes changed in every slice."""
    patient = write_phantom_patients(str(tmp_path / 'dicom'), 1, seed=3, with_rtstruct=False, geometry=TINY)[0]
    ct = os.path.join(patient, 'CT')
    if changes:
        for path in glob.glob(os.path.join(ct, '*.dcm')):
            ds = pydicom.dcmread(path)
            for keyword, value in changes.items():
                if value is None:
                    delattr(ds, keyword)
                else:
                    setattr(ds, keyword, value)
            ds.save_as(path)
    return ct


# ------------------------------------------------------------------------------------- 1. reads that verify

@pytest.fixture(scope='module')
def small_nifti(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('nifti') / 'case_0000.nii.gz')
    rng = np.random.default_rng(0)
    sitk.WriteImage(sitk.GetImageFromArray(rng.integers(-1000, 1000, (12, 20, 20)).astype(np.int16)), path)
    return path


def _refused_when_cut(data: bytes, fraction: float, folder, ending: str) -> None:
    cut = int(fraction * len(data))
    path = str(folder / f'cut{cut}{ending}')
    with open(path, 'wb') as f:
        f.write(data[:cut])
    with pytest.raises(DatasetError, match='cannot be read'):
        read_image(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fraction=st.floats(0, 1, exclude_max=True))
def test_any_truncation_of_a_nifti_gz_is_detected(small_nifti, tmp_path, fraction):
    _refused_when_cut(open(small_nifti, 'rb').read(), fraction, tmp_path, '.nii.gz')


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fraction=st.floats(0, 1, exclude_max=True))
def test_any_truncation_of_an_uncompressed_nifti_is_detected(small_nifti, tmp_path, fraction):
    _refused_when_cut(gzip.decompress(open(small_nifti, 'rb').read()), fraction, tmp_path, '.nii')


@pytest.mark.shared_data
def test_a_real_truncated_hippocampus_case_is_refused_and_the_whole_one_read(tmp_path):
    source = os.path.join(HIPPOCAMPUS, 'imagesTr', 'hippocampus_004_0000.nii.gz')
    if not os.path.isfile(source):
        pytest.skip(f'real data missing: {source}')
    whole = read_image(source)
    assert whole.array.shape == tuple(reversed(whole.image.GetSize()))
    data = open(source, 'rb').read()
    path = str(tmp_path / 'hippocampus_004_0000.nii.gz')
    with open(path, 'wb') as f:
        f.write(data[:int(len(data) * 0.6)])
    assert sitk.GetArrayFromImage(sitk.ReadImage(path)).shape == whole.array.shape  # SimpleITK does not notice
    with pytest.raises(DatasetError, match=path):
        read_image(path)


@pytest.mark.parametrize('fault, message', [
    ('float_label', 'must be integers'), ('undeclared_label', 'not declared'), ('nan_image', 'NaN or infinite'),
    ('4d_image', '4D image'), ('2d_label', 'another grid')])
def test_plan_refuses_bad_voxels_naming_the_file(workspace, capsys, fault, message):
    folder = _phantom(workspace)
    label_path = os.path.join(folder, 'labelsTr', 'phantom_002.nii.gz')
    image_path = os.path.join(folder, 'imagesTr', 'phantom_002_0000.nii.gz')
    label, image = sitk.ReadImage(label_path), sitk.ReadImage(image_path)
    if fault == 'float_label':
        array = sitk.GetArrayFromImage(label).astype(np.float32)
        array[array == 2] = 1.5  # would be truncated to 1, merging tumour into liver
        _rewrite(label_path, array, label)
        bad = label_path
    elif fault == 'undeclared_label':
        array = sitk.GetArrayFromImage(label)
        array[0, 0, 0] = 5
        _rewrite(label_path, array, label)
        bad = label_path
    elif fault == 'nan_image':
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        array[3, 10, 10] = np.nan
        _rewrite(image_path, array, image)
        bad = image_path
    elif fault == '4d_image':
        sitk.WriteImage(sitk.JoinSeries([image, image]), image_path)  # two time points
        bad = image_path
    else:
        sitk.WriteImage(label[:, :, 0], label_path)
        bad = label_path
    code, err = _plan(capsys)
    assert code == 2 and bad in err and message in err, err
    assert len(err.strip().splitlines()) == 1
    assert not os.path.isdir(workspace.path('nnUNet_preprocessed', 'Dataset991_Broken'))


def test_corrupt_labels_refuses_a_nan_or_fractional_source_label(workspace, capsys):
    folder = _phantom(workspace)
    label_path = os.path.join(folder, 'labelsTr', 'phantom_004.nii.gz')
    label = sitk.ReadImage(label_path)
    _rewrite(label_path, sitk.GetArrayFromImage(label).astype(np.float32) * 0.5, label)
    code = main(['corrupt-labels', '-d', '991', '-o', '992', '-name', 'Noisy', '-fraction', '0.2',
                 '-radius', '1', '2'])
    err = capsys.readouterr().err
    assert code == 2 and label_path in err and 'integers' in err
    assert sorted(os.listdir(workspace.path('nnUNet_raw'))) == ['Dataset991_Broken']


def test_evaluate_refuses_truncated_and_undeclared_predictions(workspace, tmp_path, capsys):
    folder = _phantom(workspace)
    ref = os.path.join(folder, 'labelsTr')
    pred = str(tmp_path / 'pred')
    os.makedirs(pred)
    for name in os.listdir(ref):
        array = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(ref, name)))
        _rewrite(os.path.join(pred, name), array, sitk.ReadImage(os.path.join(ref, name)))
    victim = os.path.join(pred, 'phantom_001.nii.gz')
    data = open(victim, 'rb').read()
    with open(victim, 'wb') as f:
        f.write(data[:len(data) - 20])  # only the gzip trailer and a few bytes are missing
    assert main(['evaluate', '-ref', ref, '-pred', pred]) == 2
    assert victim in capsys.readouterr().err
    array = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(ref, 'phantom_001.nii.gz')))
    array[0, 0, 0] = 7
    _rewrite(victim, array, sitk.ReadImage(os.path.join(ref, 'phantom_001.nii.gz')))
    assert main(['evaluate', '-ref', ref, '-pred', pred, '-djfile', os.path.join(folder, 'dataset.json')]) == 2
    err = capsys.readouterr().err
    assert victim in err and '[7]' in err and 'not declared' in err
    assert not os.path.exists(os.path.join(pred, 'metrics.json'))


def test_predict_refuses_truncated_and_2d_nifti_before_loading_the_model(tmp_path, small_nifti, capsys):
    model = _fake_model(tmp_path)
    data = open(small_nifti, 'rb').read()
    truncated = str(tmp_path / 'truncated_0000.nii.gz')
    with open(truncated, 'wb') as f:
        f.write(data[:len(data) // 2])
    out = str(tmp_path / 'out')
    code, err = _predict(capsys, truncated, out, model)
    assert code == 2 and truncated in err and 'truncated' in err
    flat = str(tmp_path / 'flat_0000.nii.gz')
    sitk.WriteImage(sitk.ReadImage(small_nifti)[:, :, 0], flat)
    code, err = _predict(capsys, flat, out, model)
    assert code == 2 and flat in err and '2D image' in err and '3D is needed' in err
    assert not os.path.exists(out) and not glob.glob(str(tmp_path / '.out*'))


# ---------------------------------------------------------------- 2. no view of a freed SimpleITK image

def test_evaluate_without_labels_finds_exactly_the_values_present(workspace, tmp_path, capsys):
    folder = _phantom(workspace, n=4)
    ref = os.path.join(folder, 'labelsTr')
    results = []
    for run in range(3):
        out = str(tmp_path / f'metrics{run}.json')
        assert main(['evaluate', '-ref', ref, '-pred', ref, '-o', out, '--csv', str(tmp_path / f'm{run}.csv')]) == 0
        results.append(json.load(open(out))['labels'])
    capsys.readouterr()
    assert results == [{'label_1': 1, 'label_2': 2}] * 3


def test_no_numpy_view_of_a_temporary_simpleitk_image_in_the_package():
    """GetArrayViewFromImage on an image that nothing keeps alive reads freed memory; the pattern is banned."""
    offenders = []
    package = os.path.dirname(nnunet_ras.__file__)
    for path in glob.glob(os.path.join(package, '**', '*.py'), recursive=True) + \
            glob.glob(os.path.join(package, '..', 'trainers', '*.py')):
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Call) and getattr(node.func, 'attr', getattr(node.func, 'id', '')) == \
                    'GetArrayViewFromImage' and node.args and isinstance(node.args[0], ast.Call):
                offenders.append(f'{path}:{node.lineno}')
    assert not offenders


# ------------------------------------------------------------------- 3. every check before the expensive step

@pytest.mark.parametrize('fault, message', [
    ('deidentified', '--allow_missing_identity'), ('no_frame', 'FrameOfReferenceUID'),
    ('bad_margin', "no structure named 'GTX'"), ('bad_roi_label', 'no label(s)')])
def test_predict_refuses_before_inference_and_writes_nothing(tmp_path, capsys, fault, message):
    changes = {'deidentified': {'StudyInstanceUID': '', 'PatientID': ''}, 'no_frame': {'FrameOfReferenceUID': None}}
    ct = _ct_patient(tmp_path, **changes.get(fault, {}))
    extra = {'bad_margin': ['--margin', 'CTV=GTX+5'], 'bad_roi_label': ['--roi_names', 'spleen=Spleen']}
    out = str(tmp_path / 'out')
    before = set(os.listdir('/tmp'))
    code, err = _predict(capsys, ct, out, _fake_model(tmp_path), *extra.get(fault, []))
    assert code == 2 and message in err, err
    assert not os.path.exists(out) and not glob.glob(str(tmp_path / '.out*'))
    assert not {d for d in set(os.listdir('/tmp')) - before if d.endswith('.nii.gz')}


# ------------------------------------------------------------ 4. no silent overwrite or mixing, one id claim

def test_predict_refuses_a_non_empty_output_folder(tmp_path, small_nifti, capsys):
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'patient_a.nii.gz').write_bytes(b'earlier result')
    code, err = _predict(capsys, small_nifti, str(out), _fake_model(tmp_path))
    assert code == 2 and 'not empty' in err and '--overwrite' in err
    assert (out / 'patient_a.nii.gz').read_bytes() == b'earlier result'


def test_two_patients_in_folders_of_one_name_get_different_case_names(tmp_path):
    a = write_phantom_patients(str(tmp_path / 'a'), 1, seed=1, with_rtstruct=False, geometry=TINY)[0]
    b = write_phantom_patients(str(tmp_path / 'b'), 1, seed=2, with_rtstruct=False, geometry=TINY)[0]
    series = [read_ct_series(os.path.join(p, 'CT')) for p in (a, b)]
    names = [case_name(os.path.join(p, 'CT'), s) for p, s in zip((a, b), series)]
    assert names[0] != names[1] and all(n != 'CT' for n in names)
    assert names[0] == case_name(os.path.join(a, 'CT'), read_ct_series(os.path.join(a, 'CT')))  # stable


def test_atomic_folder_overwrite_replaces_whole_and_failure_keeps_the_old(tmp_path):
    target = tmp_path / 'out'
    target.mkdir()
    (target / 'stale_CTV.nii.gz').write_text('old')
    with pytest.raises(RuntimeError):
        with atomic_folder(str(target), overwrite=True) as work:
            open(os.path.join(work, 'new.nii.gz'), 'w').write('half')
            raise RuntimeError('crash while writing')
    assert os.listdir(target) == ['stale_CTV.nii.gz'] and os.listdir(tmp_path) == ['out']
    with atomic_folder(str(target), overwrite=True) as work:
        open(os.path.join(work, 'new.nii.gz'), 'w').write('complete')
    assert os.listdir(target) == ['new.nii.gz'] and os.listdir(tmp_path) == ['out']


def _convert(tmp_path, labels, *extra):
    return main(['dicom-to-dataset', '-i', str(tmp_path / 'dicom'), '-d', '605', '-name', 'Rerun', '-l', *labels,
                 '-o', str(tmp_path / 'raw'), *extra])


def test_dicom_to_dataset_rerun_extends_only_with_the_same_label_map(tmp_path, capsys):
    write_phantom_patients(str(tmp_path / 'dicom'), 2, seed=0, geometry=TINY)
    assert _convert(tmp_path, LABELS) == 0
    folder = tmp_path / 'raw' / 'Dataset605_Rerun'
    before = {p: open(p, 'rb').read() for p in glob.glob(str(folder / '**' / '*'), recursive=True)
              if os.path.isfile(p)}
    capsys.readouterr()
    assert _convert(tmp_path, LABELS[::-1]) == 2  # gtv=1, liver=2: the old cases would mean the opposite
    err = capsys.readouterr().err
    assert 'cannot mix label maps' in err and str(folder) in err
    assert before == {p: open(p, 'rb').read() for p in before}

    write_phantom_patients(str(tmp_path / 'dicom'), 1, seed=5, geometry=TINY)  # a new patient
    assert _convert(tmp_path, LABELS) == 0
    out = capsys.readouterr().out
    assert 'already in' in out and '1 of 3 patient(s) converted' in out
    dataset = json.load(open(folder / 'dataset.json'))
    assert dataset['numTraining'] == 3 and len(os.listdir(folder / 'labelsTr')) == 3
    for path, data in before.items():  # old cases kept byte for byte
        if '/labelsTr/' in path or '/imagesTr/' in path:
            assert open(path, 'rb').read() == data

    assert _convert(tmp_path, LABELS[::-1], '--overwrite') == 0
    assert json.load(open(folder / 'dataset.json'))['labels'] == {'background': 0, 'gtv': 1, 'liver': 2}
    assert json.load(open(folder / 'dataset.json'))['numTraining'] == 3
    assert sorted(os.listdir(tmp_path / 'raw')) == ['Dataset605_Rerun']


def test_corrupt_labels_into_an_existing_data_set_needs_overwrite(workspace, capsys):
    _phantom(workspace)
    argv = ['corrupt-labels', '-d', '991', '-o', '994', '-name', 'Noisy', '-fraction', '0.4', '-radius', '1', '2']
    assert main(argv) == 0
    manifest = workspace.path('nnUNet_raw', 'Dataset994_Noisy', 'corruption_manifest.json')
    first = open(manifest).read()
    assert main(argv + ['-seed', '1']) == 2
    assert 'exists already' in capsys.readouterr().err and open(manifest).read() == first
    assert main(argv + ['-seed', '1', '--overwrite']) == 0
    assert json.load(open(manifest))['seed'] == 1
    assert sorted(os.listdir(workspace.path('nnUNet_raw'))) == ['Dataset991_Broken', 'Dataset994_Noisy']


def test_id_claim_checks_range_name_and_all_three_folders(workspace):
    raw = workspace.path('nnUNet_raw')
    for dataset_id, name, message in ((0, 'A', '1..999'), (1000, 'A', '1..999'), (5, 'a b', 'name'),
                                      (5, '../x', 'name')):
        with pytest.raises(UserInputError, match=message):
            with claim_dataset(raw, dataset_id, name):
                pass
    os.makedirs(workspace.path('nnUNet_results', 'Dataset007_Old'))
    with pytest.raises(UserInputError, match='Dataset007_Old'):
        with claim_dataset(raw, 7, 'New'):
            pass
    assert os.listdir(raw) == []


CLAIM_SCRIPT = """
import json, os, sys, time
from nnunet_ras.dataset_ids import claim_dataset
from nnunet_ras.errors import UserInputError
raw, dataset_id, start = sys.argv[1], None if sys.argv[2] == 'any' else int(sys.argv[2]), float(sys.argv[3])
time.sleep(max(0.0, start - time.time()))  # all claimants start together
try:
    with claim_dataset(raw, dataset_id, f'Run{os.getpid()}') as claim:
        time.sleep(0.5)
        open(os.path.join(claim.work, 'dataset.json'), 'w').write('{}')
    print(json.dumps(['ok', claim.dataset_id]))
except UserInputError as e:
    print(json.dumps(['refused', str(e)]))
"""


@pytest.mark.parametrize('dataset_id', ['any', '42'])
def test_concurrent_claims_never_share_an_id(tmp_path, dataset_id):
    raw = str(tmp_path / 'raw')
    os.makedirs(raw)
    start = time.time() + 4
    processes = [subprocess.Popen([sys.executable, '-c', CLAIM_SCRIPT, raw, dataset_id, str(start)],
                                  stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outcomes = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in processes]
    ids = [value for status, value in outcomes if status == 'ok']
    if dataset_id == 'any':
        assert len(ids) == 3 and len(set(ids)) == 3
    else:
        assert ids == [42] and sum(status == 'refused' for status, _ in outcomes) == 2
    assert len(set(d.split('_')[0] for d in os.listdir(raw))) == len(os.listdir(raw)) == len(ids)


# ------------------------------------------------- 5. interruption leaves nothing that looks complete

def _leftovers(folder):
    return [p for p in glob.glob(os.path.join(folder, '**', '.*'), recursive=True) if '.part-' in p]


def _interrupt(cmd, env, watch, sig, seed):
    """Starts ``cmd``, waits until it writes under ``watch`` (a work folder appears), then sends ``sig`` after a
    random delay; returns (return code, stderr)."""
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not _leftovers(watch) and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(random.Random(seed).uniform(0, 0.3))
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)
    return process.returncode, err


def _signal_came_after_the_command(sig, code):
    """A SIGTERM that lands after the command has returned, once its handler is restored and the process is on its
    way out, ends the process by the default disposition (return code -15) instead of the handler's 143; the work
    was finished and renamed into place by then, which the caller asserts."""
    return sig == signal.SIGTERM and code == -signal.SIGTERM


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGKILL])
def test_interrupted_corrupt_labels_leaves_no_partial_data_set(workspace, sig):
    write_phantom_dataset(workspace.env['nnUNet_raw'], 991, 'Source', num_train=12, num_test=0)
    raw = workspace.path('nnUNet_raw')
    cmd = ['nnunet-ras', 'corrupt-labels', '-d', '991', '-o', '993', '-name', 'Noisy', '-fraction', '1',
           '-radius', '2', '4']
    code, err = _interrupt(cmd, workspace.env, raw, sig, seed=int(sig))
    if code == 0:
        pytest.skip('the run finished before the signal')
    target = os.path.join(raw, 'Dataset993_Noisy')
    if os.path.exists(target):  # the signal came after the final rename: then the data set is complete
        assert check_raw_dataset(target) and os.path.isfile(os.path.join(target, 'corruption_manifest.json'))
        cmd += ['--overwrite']
    if _signal_came_after_the_command(sig, code):
        assert os.path.exists(target) and not _leftovers(raw)
    elif sig == signal.SIGTERM:
        assert code == 143 and 'terminated' in err and 'Traceback' not in err
        assert not _leftovers(raw)
    workspace.run(cmd)  # the next run cleans up and succeeds
    assert not _leftovers(raw)
    assert len(os.listdir(os.path.join(raw, 'Dataset993_Noisy', 'labelsTr'))) == 12


@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGKILL])
def test_interrupted_dicom_to_dataset_leaves_no_partial_case(workspace, tmp_path, sig):
    write_phantom_patients(str(tmp_path / 'dicom'), 8, seed=0, geometry=TINY)
    raw = str(tmp_path / 'raw')
    os.makedirs(raw)
    cmd = ['nnunet-ras', 'dicom-to-dataset', '-i', str(tmp_path / 'dicom'), '-d', '606', '-name', 'Killed',
           '-l', *LABELS, '-o', raw]
    code, err = _interrupt(cmd, workspace.env, raw, sig, seed=int(sig) + 1)
    if code == 0:
        pytest.skip('the run finished before the signal')
    target = os.path.join(raw, 'Dataset606_Killed')
    if os.path.exists(target):  # the signal came after the final rename: then the data set is complete
        assert check_raw_dataset(target)
        cmd += ['--overwrite']
    if _signal_came_after_the_command(sig, code):
        assert os.path.exists(target) and not _leftovers(raw)
    elif sig == signal.SIGTERM:
        assert code == 143 and not _leftovers(raw)
    workspace.run(cmd)
    assert not _leftovers(raw)
    folder = os.path.join(raw, 'Dataset606_Killed')
    report = json.load(open(os.path.join(folder, 'dicom_conversion_report.json')))
    assert len(report) == 8 and all(r['status'] == 'converted' or r['reason'] for r in report)
    converted = sorted(r['patient'] for r in report if r['status'] == 'converted')
    assert json.load(open(os.path.join(folder, 'dataset.json')))['numTraining'] == len(converted) > 0
    assert sorted(os.listdir(os.path.join(folder, 'labelsTr'))) == [f'{c}.nii.gz' for c in converted]


def _exit_with_sigterm_disposition():
    os._exit(0 if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL else 1)


def test_worker_processes_forked_during_a_command_die_on_sigterm(monkeypatch, capsys):
    """nnU-Net's pools end their workers with SIGTERM; a worker that inherited the command's Python-level handler
    and sat in C code would never end (the parent then hangs in Pool.terminate)."""
    import multiprocessing
    import nnunet_ras.cli as cli
    codes = []

    def command(args):
        worker = multiprocessing.get_context('fork').Process(target=_exit_with_sigterm_disposition)
        worker.start()
        worker.join(30)
        codes.append(worker.exitcode)
        return 0
    monkeypatch.setattr(cli, '_trainer_path', command)
    assert main(['trainer-path']) == 0 and codes == [0]


def test_a_killed_writer_leaves_only_a_hidden_temporary_that_the_next_run_removes(tmp_path):
    target = str(tmp_path / 'metrics.json')
    code = ("import os, sys\n"
            "from nnunet_ras._io import write_atomically\n"
            "def write(p):\n"
            "    open(p, 'w').write('{\"half\": ')\n"
            "    os.kill(os.getpid(), 9)\n"
            f"write_atomically({target!r}, write)\n")
    subprocess.run([sys.executable, '-c', code])
    assert not os.path.exists(target)
    assert len(os.listdir(tmp_path)) == 1 and os.listdir(tmp_path)[0].startswith('.metrics.json.part-')
    assert remove_stale_parts(str(tmp_path)) == 1 and os.listdir(tmp_path) == []
    write_atomically(target, lambda p: open(p, 'w').write('{}'))
    assert os.listdir(tmp_path) == ['metrics.json']


# ----------------------------------------------------------------------- 6. geometry that cannot be right

def _rtstruct_patient(tmp_path):
    patient = write_phantom_patients(str(tmp_path / 'dicom'), 1, seed=0, geometry=TINY)[0]
    return os.path.join(patient, 'CT'), os.path.join(patient, 'RS_plan.dcm')


@pytest.mark.parametrize('shift_mm, refused', [(1000.0, True), (20.0, False)])
def test_contours_outside_the_ct_are_refused_or_warned(tmp_path, shift_mm, refused):
    ct, rtstruct = _rtstruct_patient(tmp_path)
    ds = pydicom.dcmread(rtstruct)
    for roi in ds.ROIContourSequence:
        for contour in roi.ContourSequence:
            points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
            points[:, 0] += shift_mm
            contour.ContourData = [f'{v:.3f}' for v in points.ravel()]
    ds.save_as(rtstruct)
    series = read_ct_series(ct)
    if refused:
        with pytest.raises(DicomError, match='entirely outside'):
            read_rtstruct(rtstruct, series)
    else:
        structures = read_rtstruct(rtstruct, series)  # the liver now reaches past the right edge of the image
        assert any("ROI 'Liver'" in w and 'outside' in w for w in structures.warnings)
        assert structures.mask('Liver').any()


def test_series_with_two_frames_of_reference_is_refused(tmp_path):
    ct = _ct_patient(tmp_path)
    path = sorted(glob.glob(os.path.join(ct, '*.dcm')))[0]
    ds = pydicom.dcmread(path)
    ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
    ds.save_as(path)
    with pytest.raises(DicomError, match='frames of reference'):
        read_ct_series(ct)


def test_non_ct_model_on_a_ct_series_is_refused(tmp_path, capsys):
    code, err = _predict(capsys, _ct_patient(tmp_path), str(tmp_path / 'out'), _fake_model(tmp_path, channel='T2'))
    assert code == 2 and "'T2', not CT" in err


@pytest.mark.parametrize('names, message', [
    (['tumour=' + 'G' * 65], 'DICOM allows 64'), (['tumour=GTV_肝'], 'cannot hold'), (['tumour=GTV\\1'], 'backslash')])
def test_roi_names_dicom_cannot_hold_are_refused_before_inference(tmp_path, capsys, names, message):
    code, err = _predict(capsys, _ct_patient(tmp_path), str(tmp_path / 'out'), _fake_model(tmp_path),
                         '--roi_names', *names)
    assert code == 2 and message in err, err


def test_absurd_margins_are_refused_and_margins_beyond_the_image_warned():
    with pytest.raises(DicomError, match='not cm'):
        parse_margin('PTV=CTV+150')
    with pytest.raises(DicomError):
        parse_margin('PTV=CTV+nan')
    mask = np.zeros((10, 20, 20), bool)
    mask[4:6, 2:5, 8:12] = True  # 2 voxels (2 mm) from the x border
    specs = [parse_margin('CTV=GTV+5'), parse_margin('PTV=CTV+1@GTV')]
    made = apply_margins({'GTV': mask}, (3.0, 1.0, 1.0), specs)
    warnings = margin_warnings({'GTV': mask}, made, specs)
    assert len(warnings) == 1 and 'CTV' in warnings[0] and 'border' in warnings[0]


# ------------------------------------------------------------------ 7. one line and exit 2 for user mistakes

def test_user_mistakes_are_one_line_and_exit_2(workspace, tmp_path, capsys, small_nifti):
    folder = _phantom(workspace)
    model = _fake_model(tmp_path)
    a_file = str(tmp_path / 'a_file')
    open(a_file, 'w').write('x')
    cases = [
        (['predict', '-i', small_nifti, '-o', a_file, '-m', model, '-f', '0', '-device', 'cpu'], 'is a file'),
        (['predict', '-i', small_nifti, '-o', str(tmp_path / 'o'), '-d', '777', '-device', 'cpu'], 'dataset 777'),
        (['plan_and_preprocess', '-d', '777'], 'dataset 777'),
        (['corrupt-labels', '-d', '777', '-o', '992', '-name', 'X', '-fraction', '0.5', '-radius', '1', '2'],
         'dataset 777'),
        (['evaluate', '-ref', os.path.join(folder, 'labelsTr'), '-pred', os.path.join(folder, 'labelsTr'),
          '-o', str(tmp_path)], 'is a folder'),
        (['evaluate', '-ref', os.path.join(folder, 'labelsTr'), '-pred', os.path.join(folder, 'labelsTr'),
          '-o', os.path.join(a_file, 'metrics.json')], 'is a file, not a folder'),
        (['phantom', '-o', a_file, '-d', '5', '-n', '1', '-t', '0'], a_file),
        (['dicom-phantom', '-o', os.path.join(a_file, 'patients'), '-n', '1'], a_file),
    ]
    import torch
    if not torch.cuda.is_available():
        cases.append((['predict', '-i', small_nifti, '-o', str(tmp_path / 'o'), '-m', model, '-device', 'cuda'],
                      'no CUDA GPU'))
    for argv, message in cases:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and message in err and 'Traceback' not in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize('fault, message', [
    ('empty_imagesTr', 'no training images'), ('labels_list', "'labels' must be"),
    ('numTraining_text', "'numTraining' must be"), ('not_json', 'not a readable JSON')])
def test_malformed_data_sets_are_one_line_and_exit_2(workspace, capsys, fault, message):
    folder = _phantom(workspace)
    json_path = os.path.join(folder, 'dataset.json')
    dataset_json = json.load(open(json_path))
    if fault == 'empty_imagesTr':
        for f in glob.glob(os.path.join(folder, 'imagesTr', '*')):
            os.remove(f)
    elif fault == 'labels_list':
        dataset_json['labels'] = ['background', 'liver']
    elif fault == 'numTraining_text':
        dataset_json['numTraining'] = '5'
    json.dump(dataset_json, open(json_path, 'w'))
    if fault == 'not_json':
        open(json_path, 'w').write('{"labels": {')
    code, err = _plan(capsys)
    assert code == 2 and message in err and 'Traceback' not in err, err


def test_zero_pixel_spacing_is_refused(tmp_path, capsys):
    ct = _ct_patient(tmp_path, PixelSpacing=['0', '0'])
    code, err = _predict(capsys, ct, str(tmp_path / 'out'), _fake_model(tmp_path))
    assert code == 2 and 'PixelSpacing' in err and 'positive' in err


def test_an_internal_error_keeps_its_traceback_and_says_it_is_a_bug(monkeypatch, capsys):
    import nnunet_ras.cli as cli

    def broken(args):
        raise ZeroDivisionError('a bug')
    monkeypatch.setattr(cli, '_trainer_path', broken)
    assert main(['trainer-path']) == 1
    err = capsys.readouterr().err
    assert 'Traceback' in err and 'ZeroDivisionError' in err and 'bug' in err.splitlines()[-1]


def test_dicom_phantom_never_mixes_into_a_non_empty_folder(tmp_path, capsys):
    target = tmp_path / 'patients'
    assert main(['dicom-phantom', '-o', str(target), '-n', '1', '-seed', '1', '--ct_only']) == 0
    before = sorted(os.listdir(target / 'patient_01000' / 'CT'))
    capsys.readouterr()
    code = main(['dicom-phantom', '-o', str(target), '-n', '2', '-seed', '2'])
    err = capsys.readouterr().err
    assert code == 2 and 'not empty' in err and '--overwrite' in err
    assert os.listdir(target) == ['patient_01000'] and sorted(os.listdir(target / 'patient_01000' / 'CT')) == before
    assert main(['dicom-phantom', '-o', str(target), '-n', '2', '-seed', '2', '--overwrite']) == 0
    assert sorted(os.listdir(target)) == ['patient_02000', 'patient_02001']  # replaced whole, nothing stale
    assert [p for p in os.listdir(tmp_path) if p != 'patients'] == []  # no temporary left next to it
