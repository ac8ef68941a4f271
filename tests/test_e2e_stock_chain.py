"""The stock nnU-Net chain with the plugin on a tiny phantom, on CPU.

Every step is nnU-Net's own command line (or ``nnunet-ras plan_and_preprocess``), run as a user would run it.
The tests of this module build on each other in file order and share one workspace.
"""
import glob
import json
import os
import re
import signal
import subprocess
import time

import numpy as np
import pytest
import SimpleITK as sitk
import torch

pytestmark = pytest.mark.e2e
DATASET = '990'
RAS = 'nnUNetTrainerRAS_1epoch_5iters'
DEFAULT = 'nnUNetTrainer_1epoch_5iters'


def _model_folder(ws, trainer, plans='nnUNetPlans', configuration='3d_fullres'):
    return ws.path('nnUNet_results', 'Dataset990_TinyPhantom', f'{trainer}__{plans}__{configuration}')


def _predict(ws, output, trainer, plans='nnUNetPlans', configuration='3d_fullres', folds=('0',), extra=(),
             step=None):
    """Stock nnUNetv2_predict on the test images (default worker processes)."""
    ws.run(['nnUNetv2_predict', '-i', ws.path('nnUNet_raw', 'Dataset990_TinyPhantom', 'imagesTs'), '-o', output,
            '-d', DATASET, '-c', configuration, '-tr', trainer, '-p', plans, '-f', *folds, '-device', 'cpu',
            *extra], step=step)
    _assert_segmentations_on_image_grid(ws, output)


def _assert_segmentations_on_image_grid(ws, folder):
    images = sorted(glob.glob(ws.path('nnUNet_raw', 'Dataset990_TinyPhantom', 'imagesTs', '*_0000.nii.gz')))
    assert images
    for image_path in images:
        case = os.path.basename(image_path)[:-len('_0000.nii.gz')]
        seg = sitk.ReadImage(os.path.join(folder, case + '.nii.gz'))
        image = sitk.ReadImage(image_path)
        assert seg.GetSize() == image.GetSize()
        assert np.allclose(seg.GetSpacing(), image.GetSpacing())
        assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1, 2}


def test_ras_and_default_trainers_on_stock_plans(tiny_phantom):
    ws = tiny_phantom
    ws.run(['nnUNetv2_plan_and_preprocess', '-d', DATASET, '-c', '3d_fullres', '-np', '2', '-npfp', '2'],
           step='nnUNetv2_plan_and_preprocess (stock planner)')
    for trainer in (RAS, DEFAULT):
        for fold in ('0', '1'):
            ws.run(['nnUNetv2_train', DATASET, '3d_fullres', fold, '-tr', trainer, '-device', 'cpu', '--npz'],
                   step=f'nnUNetv2_train {trainer} fold {fold}')
            assert os.path.isfile(os.path.join(_model_folder(ws, trainer), f'fold_{fold}', 'checkpoint_final.pth'))
    weights = torch.load(os.path.join(_model_folder(ws, RAS), 'fold_0', 'checkpoint_final.pth'),
                         map_location='cpu', weights_only=False)['network_weights']
    assert any('.attention.' in k for k in weights), 'RAS trainer did not build RAS U-Net from the default plans'

    dice_ce = 'nnUNetTrainerRAS_DiceCE_1epoch_5iters'
    ws.run(['nnUNetv2_train', DATASET, '3d_fullres', '0', '-tr', dice_ce, '-device', 'cpu'],
           step=f'nnUNetv2_train {dice_ce} fold 0')
    loss = lambda trainer: json.load(open(os.path.join(_model_folder(ws, trainer), 'fold_0', 'debug.json')))['loss']
    assert 'MemoryEfficientSoftDiceLoss' in loss(RAS) and 'CrossEntropy' not in loss(RAS)  # Dice only
    assert 'DC_and_CE_loss' in loss(dice_ce)


def test_find_best_configuration_and_ensemble_ras_with_default(tiny_phantom):
    ws = tiny_phantom
    ws.run(['nnUNetv2_find_best_configuration', DATASET, '-c', '3d_fullres', '-tr', RAS, DEFAULT, '-f', '0', '1',
            '-np', '2'], step='nnUNetv2_find_best_configuration (RAS + default, folds 0 1)')
    info = json.load(open(ws.path('nnUNet_results', 'Dataset990_TinyPhantom', 'inference_information.json')))
    evaluated = json.dumps(info)
    assert RAS in evaluated and DEFAULT in evaluated and 'ensemble' in evaluated.lower()

    outputs = {}
    for trainer in (RAS, DEFAULT):
        outputs[trainer] = os.path.join(ws.root, f'pred_{trainer}')
        _predict(ws, outputs[trainer], trainer, folds=('0', '1'), extra=('--save_probabilities',),
                 step=f'nnUNetv2_predict {trainer} folds 0 1')
    ensemble = os.path.join(ws.root, 'pred_ensemble')
    ws.run(['nnUNetv2_ensemble', '-i', outputs[RAS], outputs[DEFAULT], '-o', ensemble, '-np', '2'],
           step='nnUNetv2_ensemble RAS + default')
    _assert_segmentations_on_image_grid(ws, ensemble)
    for seg_path in glob.glob(os.path.join(ensemble, '*.nii.gz')):
        case = os.path.basename(seg_path)[:-len('.nii.gz')]
        probabilities = [np.load(os.path.join(outputs[t], case + '.npz'))['probabilities'] for t in outputs]
        expected = np.mean(probabilities, 0).argmax(0)
        ensembled = sitk.GetArrayFromImage(sitk.ReadImage(seg_path))
        assert np.mean(expected == ensembled) > 0.99


def _logged_epochs(log: str) -> set:
    """The epochs an nnU-Net training log says it started ('<time>: Epoch 3 ')."""
    return {int(n) for n in re.findall(r': Epoch (\d+)\s*$', log, flags=re.MULTILINE)}


def _train_until_epoch_1_then_kill(ws, cmd, fold, log_path, timeout=600):
    """Start training and kill it once epoch 0's checkpoint is written. Watches nnU-Net's own training log (written
    and closed line by line), not the command's stdout, which is block-buffered unless PYTHONUNBUFFERED is set."""
    with open(log_path, 'w') as log:
        process = subprocess.Popen(cmd, env=ws.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline and process.poll() is None:
            logs = glob.glob(os.path.join(fold, 'training_log_*.txt'))
            if logs and 1 in _logged_epochs(open(logs[0]).read()):  # logged after epoch 0's checkpoint was written
                break
            time.sleep(0.2)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_ras_planner_plans_train_continue_and_stock_predict(tiny_phantom):
    ws = tiny_phantom
    ws.run(['nnunet-ras', 'plan_and_preprocess', '-d', DATASET, '-c', '3d_fullres', '2d', '-np', '2', '-npfp', '2',
            '-gpu_memory_target', '0.5', '-base_features', '8', '--no_pbar'],
           step='nnunet-ras plan_and_preprocess (RAS planner, 3d_fullres + 2d)')
    plans = json.load(open(ws.path('nnUNet_preprocessed', 'Dataset990_TinyPhantom', 'nnUNetRASPlans.json')))
    fullres = plans['configurations']['3d_fullres']
    assert fullres['architecture']['network_class_name'] == 'nnunet_ras.networks.ras_unet.RASUNet'
    assert fullres['normalization_schemes'] == ['NoNormalization']
    assert fullres['spacing'] == [3.0, 1.0, 1.0]
    assert fullres['architecture']['arch_kwargs']['intensity_window'] == [[-150.0, 150.0]]

    trainer = 'nnUNetTrainerRAS_2epochs_5iters'
    cmd = ['nnUNetv2_train', DATASET, '3d_fullres', '0', '-tr', trainer, '-p', 'nnUNetRASPlans', '-device', 'cpu']
    fold = os.path.join(_model_folder(ws, trainer, 'nnUNetRASPlans'), 'fold_0')
    start = time.time()
    _train_until_epoch_1_then_kill(ws, cmd, fold, os.path.join(ws.root, 'stopped_run.log'))
    assert os.path.isfile(os.path.join(fold, 'checkpoint_latest.pth'))
    assert not os.path.isfile(os.path.join(fold, 'checkpoint_final.pth'))
    logs_before = set(glob.glob(os.path.join(fold, 'training_log_*.txt')))
    time.sleep(1.1)  # nnU-Net names its logs by the second
    ws.run(cmd + ['--c'])
    from conftest import STEP_TIMES
    STEP_TIMES['nnUNetv2_train RAS plans, stopped after epoch 0, then --c'] = time.time() - start
    assert os.path.isfile(os.path.join(fold, 'checkpoint_final.pth'))
    continued_log = open((set(glob.glob(os.path.join(fold, 'training_log_*.txt'))) - logs_before).pop()).read()
    assert _logged_epochs(continued_log) == {1}  # resumed, not restarted

    _predict(ws, os.path.join(ws.root, 'pred_ras_plans'), trainer, 'nnUNetRASPlans',
             step='nnUNetv2_predict RAS plans (default worker processes)')


def test_2d_configuration_trains_and_predicts(tiny_phantom):
    ws = tiny_phantom
    ws.run(['nnUNetv2_train', DATASET, '2d', '0', '-tr', RAS, '-p', 'nnUNetRASPlans', '-device', 'cpu'],
           step='nnUNetv2_train RAS 2d fold 0')
    _predict(ws, os.path.join(ws.root, 'pred_2d'), RAS, 'nnUNetRASPlans', '2d', step='nnUNetv2_predict RAS 2d')


def test_unknown_trainer_name_is_refused_by_name(tiny_phantom):
    result = tiny_phantom.run(['nnUNetv2_train', DATASET, '3d_fullres', '0', '-tr', 'nnUNetTrainerNoSuchVariant',
                               '-device', 'cpu'], check=False)
    assert result.returncode != 0
    assert 'nnUNetTrainerNoSuchVariant' in result.stderr
