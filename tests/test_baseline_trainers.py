"""Every baseline and ablation trainer through one short stock train-and-predict on the tiny phantom (CPU).

Stock ``nnUNetv2_plan_and_preprocess`` once (default ``nnUNetPlans``), then per trainer stock ``nnUNetv2_train`` with
its 1-epoch / 5-iteration variant and stock ``nnUNetv2_predict``; the LRDEHL fine-tuning continues from the RAS
trainer's checkpoint with ``-pretrained_weights``.
"""
import glob
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from torch import nn

import nnunet_ras.training
from conftest import NnunetWorkspace

pytestmark = pytest.mark.e2e
DATASET, NAME = '990', 'Dataset990_TinyPhantom'


def _checkpoint(ws: NnunetWorkspace, trainer: str) -> str:
    return ws.path('nnUNet_results', NAME, f'{trainer}__nnUNetPlans__3d_fullres', 'fold_0', 'checkpoint_final.pth')


def _weights(ws: NnunetWorkspace, trainer: str) -> dict:
    return torch.load(_checkpoint(ws, trainer), map_location='cpu', weights_only=False)['network_weights']


def _debug(ws: NnunetWorkspace, trainer: str) -> dict:
    return json.load(open(os.path.join(os.path.dirname(_checkpoint(ws, trainer)), 'debug.json')))


def _rebuilt_network(ws: NnunetWorkspace, trainer: str) -> nn.Module:
    """The trainer's own network for the plans, with the checkpoint loaded strictly (so the weights fit it)."""
    plans = PlansManager(json.load(open(ws.path('nnUNet_preprocessed', NAME, 'nnUNetPlans.json'))))
    network = getattr(nnunet_ras.training, trainer).build_network_architecture(
        plans, plans.get_configuration('3d_fullres'), 1, 3, enable_deep_supervision=False)
    network.load_state_dict(_weights(ws, trainer))
    return network


def _conv_kernels(weights: dict) -> set:
    return {tuple(w.shape[2:]) for k, w in weights.items() if k.endswith('.weight') and w.ndim >= 4}


# what each checkpoint must show to be the intended architecture (and loss)
ARCHITECTURE_CHECKS = {
    'nnUNetTrainerSEUNet': lambda ws, t: any('.fc1.' in k for k in _weights(ws, t))
    and not any('.stem.' in k for k in _weights(ws, t)),
    'nnUNetTrainerResSEUNet': lambda ws, t: any('.squeeze_excitation.fc1.' in k for k in _weights(ws, t)),
    'nnUNetTrainerVNet': lambda ws, t: (5, 5, 5) in _conv_kernels(_weights(ws, t))
    and 'SquaredDenominatorDiceLoss' in _debug(ws, t)['loss'],
    'nnUNetTrainerHybrid25D': lambda ws, t: _weights(ws, t)['unet.stem.weight'].shape[1] == 3
    and all(len(k) == 2 for k in _conv_kernels(_weights(ws, t))),
    'nnUNetTrainerRAS_NoAttention': lambda ws, t: not any('.attention.' in k for k in _weights(ws, t))
    and any('.in_plane.' in k for k in _weights(ws, t)),
    'nnUNetTrainerRAS_NoSeparable': lambda ws, t: any('.attention.' in k for k in _weights(ws, t))
    and not any('.in_plane.' in k for k in _weights(ws, t)) and (3, 3, 3) in _conv_kernels(_weights(ws, t)),
    'nnUNetTrainerRAS_NoDropout': lambda ws, t: not any(isinstance(m, nn.Dropout)
                                                        for m in _rebuilt_network(ws, t).modules()),
    'nnUNetTrainerRAS_SquaredDice': lambda ws, t: 'SquaredDenominatorDiceLoss' in _debug(ws, t)['loss']
    and any('.attention.' in k for k in _weights(ws, t)),
}


@pytest.fixture(scope='module')
def planned(tiny_phantom):
    tiny_phantom.run(['nnUNetv2_plan_and_preprocess', '-d', DATASET, '-c', '3d_fullres', '-np', '1', '-npfp', '1'],
                     step='nnUNetv2_plan_and_preprocess (baseline trainers)')
    return tiny_phantom


def _train_and_predict(ws: NnunetWorkspace, trainer: str, *extra: str) -> str:
    """Trains and predicts; returns the training's console output."""
    short = f'{trainer}_1epoch_5iters'
    training = ws.run(['nnUNetv2_train', DATASET, '3d_fullres', '0', '-tr', short, '-device', 'cpu', *extra],
           step=f'nnUNetv2_train {short}')
    output = os.path.join(ws.root, f'pred_{trainer}')
    images = ws.path('nnUNet_raw', NAME, 'imagesTs')
    ws.run(['nnUNetv2_predict', '-i', images, '-o', output, '-d', DATASET, '-c', '3d_fullres', '-tr', short,
            '-f', '0', '-device', 'cpu', '-npp', '1', '-nps', '1'], step=f'nnUNetv2_predict {short}')
    image_paths = sorted(glob.glob(os.path.join(images, '*_0000.nii.gz')))
    assert image_paths
    for image_path in image_paths:
        image = sitk.ReadImage(image_path)
        seg = sitk.ReadImage(os.path.join(output, os.path.basename(image_path)[:-len('_0000.nii.gz')] + '.nii.gz'))
        assert seg.GetSize() == image.GetSize()
        assert np.allclose(seg.GetSpacing(), image.GetSpacing())
        assert np.allclose(seg.GetOrigin(), image.GetOrigin())
        assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1, 2}
    return training.stdout


@pytest.mark.parametrize('trainer', ARCHITECTURE_CHECKS)
def test_trainer_trains_and_predicts_with_stock_commands(planned, trainer):
    _train_and_predict(planned, trainer)
    assert ARCHITECTURE_CHECKS[trainer](planned, f'{trainer}_1epoch_5iters')


def test_lrdehl_fine_tunes_the_ras_checkpoint(planned):
    ras = 'nnUNetTrainerRAS_1epoch_5iters'
    planned.run(['nnUNetv2_train', DATASET, '3d_fullres', '0', '-tr', ras, '-device', 'cpu'],
                step=f'nnUNetv2_train {ras}')
    console = _train_and_predict(planned, 'nnUNetTrainerRAS_LRDEHL', '-pretrained_weights',
                                 _checkpoint(planned, ras))
    assert 'Loading pretrained weights' in console
    fine_tuned = 'nnUNetTrainerRAS_LRDEHL_1epoch_5iters'
    debug = _debug(planned, fine_tuned)
    assert 'LRDEHLoss' in debug['loss'] and float(debug['initial_lr']) == 1e-3
    before, after = _weights(planned, ras), _weights(planned, fine_tuned)
    assert before.keys() == after.keys()
    first_conv = next(k for k in before if k.endswith('in_plane.weight'))
    # continued from the RAS weights (5 steps at the fine-tuning learning rate move them little)
    assert (after[first_conv] - before[first_conv]).norm() < 0.2 * before[first_conv].norm()
