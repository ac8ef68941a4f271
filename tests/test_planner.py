"""nnUNetPlannerRAS on a CT phantom and on real MRI (Hippocampus): spacing, normalisation, window, memory budget."""
import json
import os
import shutil

import numpy as np
import pytest
from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset

from nnunet_ras.phantom import write_phantom_dataset
from nnunet_ras.planning import nnUNetPlannerRAS
from conftest import TINY

HIPPOCAMPUS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '..', 'shared', 'data',
                           'Dataset004_Hippocampus')


def _hippocampus_subset(raw: str, n: int = 6) -> None:
    """A small copy of the real data set (read from ../shared/data, written to the test's temporary folder)."""
    if not os.path.isdir(HIPPOCAMPUS):
        pytest.fail(f"real data missing: {HIPPOCAMPUS}")
    target = os.path.join(raw, 'Dataset992_HippoSubset')
    cases = sorted(f[:-len('.nii.gz')] for f in os.listdir(os.path.join(HIPPOCAMPUS, 'labelsTr')))[:n]
    for sub in ('imagesTr', 'labelsTr'):
        os.makedirs(os.path.join(target, sub))
    for case in cases:
        shutil.copy(os.path.join(HIPPOCAMPUS, 'imagesTr', case + '_0000.nii.gz'), os.path.join(target, 'imagesTr'))
        shutil.copy(os.path.join(HIPPOCAMPUS, 'labelsTr', case + '.nii.gz'), os.path.join(target, 'labelsTr'))
    dataset_json = json.load(open(os.path.join(HIPPOCAMPUS, 'dataset.json')))
    dataset_json['numTraining'] = n
    json.dump(dataset_json, open(os.path.join(target, 'dataset.json'), 'w'))


def _plan(dataset_id: int, **kwargs) -> dict:
    planner = nnUNetPlannerRAS(dataset_id, **kwargs)
    return planner.plan_experiment()


def test_ct_plans_follow_the_paper(workspace):
    write_phantom_dataset(workspace.env['nnUNet_raw'], 993, 'PlanCT', num_train=5, num_test=0, geometry=TINY)
    extract_fingerprint_dataset(993, num_processes=1, verbose=False, show_progress_bar=False)
    plans = _plan(993)
    assert plans['plans_name'] == 'nnUNetRASPlans'
    for name in ('3d_fullres', '2d'):
        config = plans['configurations'][name]
        assert config['normalization_schemes'] == ['NoNormalization']
        assert config['architecture']['network_class_name'] == 'nnunet_ras.networks.ras_unet.RASUNet'
        assert config['architecture']['arch_kwargs']['intensity_window'] == [[-150.0, 150.0]]
    assert list(plans['configurations']['3d_fullres']['spacing']) == [3.0, 1.0, 1.0]
    _check_torch_resampling(plans)
    overwritten = _plan(993, overwrite_target_spacing=[2.0, 0.8, 0.8], plans_name='nnUNetRASPlans_custom')
    assert list(overwritten['configurations']['3d_fullres']['spacing']) == [2.0, 0.8, 0.8]


def _check_torch_resampling(plans: dict) -> None:
    """The plans' resampling is nnU-Net's torch resampling under its anisotropy rule: a CT at 2.5 x 0.6 x 0.7 mm
    goes to the plans' 3 x 1 x 1 mm close to nnU-Net's default (cubic in-plane) result, nearest between slices, and
    a label map keeps its labels."""
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape, resample_data_or_seg_to_shape
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    manager = PlansManager(plans).get_configuration('3d_fullres')
    assert manager.configuration['resampling_fn_data'] == 'resample_torch_fornnunet'
    assert manager.configuration['resampling_fn_seg'] == 'resample_torch_fornnunet'
    assert manager.configuration['resampling_fn_probabilities'] == 'resample_torch_fornnunet'
    spacing, target = [2.5, 0.6, 0.7], manager.spacing
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in (24, 80, 72)], indexing='ij')
    ct = (40 + 60 * np.sin(3 * x) * np.cos(2 * y) + 20 * z).astype(np.float32)[None]  # smooth soft-tissue HU
    shape = compute_new_shape(ct.shape[1:], spacing, target)
    ours = manager.resampling_fn_data(ct, shape, spacing, target)
    default = resample_data_or_seg_to_shape(ct, shape, spacing, target, is_seg=False, order=3, order_z=0)
    assert ours.shape == default.shape == (1, *shape)
    assert np.abs(ours - default).mean() < 1  # HU, of a 60 HU pattern: the same grid, another interpolation order
    body = y ** 2 + x ** 2 < 0.8
    label = (body * (1 + (x > 0))).astype(np.int8)[None]
    resampled = manager.resampling_fn_seg(label, shape, spacing, target)
    assert set(np.unique(resampled)) == {0, 1, 2}


@pytest.mark.shared_data
def test_mri_plans_keep_nnunet_normalisation_and_fit_the_memory_budget(workspace):
    _hippocampus_subset(workspace.env['nnUNet_raw'])
    extract_fingerprint_dataset(992, num_processes=2, verbose=False, show_progress_bar=False)
    plans = _plan(992)
    config = plans['configurations']['3d_fullres']
    assert config['normalization_schemes'] == ['ZScoreNormalization']
    assert config['architecture']['arch_kwargs']['intensity_window'] is None
    assert np.allclose(config['spacing'], [1.0, 1.0, 1.0])

    small = _plan(992, gpu_memory_target_in_gb=0.05, plans_name='small')['configurations']['3d_fullres']
    large = _plan(992, gpu_memory_target_in_gb=8, plans_name='large')['configurations']['3d_fullres']
    voxels = lambda c: c['batch_size'] * np.prod(c['patch_size'])
    assert voxels(small) < voxels(large)
