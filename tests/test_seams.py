"""The seams between the package's layers: training and scoring encode a label for the QAM with one function and
get the same channels, and imports run one way (quality never imports training, networks nothing above it)."""
import ast
import os
import subprocess
import sys

import numpy as np
import torch
from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunet_ras.quality import ranking, weighting
from nnunet_ras.training import quality_weighting

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'nnunet_ras')


def test_training_and_scoring_encode_a_label_map_alike():
    assert quality_weighting.label_channels is weighting.label_channels  # the trainer's encoding is quality's
    manager = LabelManager({'background': 0, 'liver': 1, 'tumour': 2}, regions_class_order=None)
    seg = np.random.default_rng(0).integers(0, 3, (1, 4, 6, 6)).astype(np.int16)
    training = weighting.label_channels(torch.from_numpy(seg)[None], manager.num_segmentation_heads, False)[0]
    scoring = weighting.case_label_channels(seg, manager)
    assert scoring.shape == (3, 4, 6, 6) and np.array_equal(training.numpy(), scoring)
    assert np.array_equal(scoring, np.stack([seg[0] == c for c in range(3)]).astype(np.float32))


def test_training_and_scoring_encode_regions_alike():
    manager = LabelManager({'background': 0, 'whole': (1, 2), 'core': 2}, regions_class_order=(1, 2))
    seg = np.random.default_rng(1).integers(0, 3, (1, 4, 6, 6)).astype(np.int16)
    # what nnU-Net's data loader hands the trainer for region training
    target = ConvertSegmentationToRegionsTransform(manager.foreground_regions)(segmentation=torch.from_numpy(seg))
    training = weighting.label_channels(target['segmentation'][None], manager.num_segmentation_heads, True)[0]
    scoring = weighting.case_label_channels(seg, manager)
    assert scoring.shape == (2, 4, 6, 6) and np.array_equal(training.numpy(), scoring)
    assert np.array_equal(scoring[0], np.isin(seg[0], (1, 2))) and np.array_equal(scoring[1], seg[0] == 2)


def _imports(folder: str):
    for name in sorted(os.listdir(os.path.join(PACKAGE, folder))):
        if name.endswith('.py'):
            tree = ast.parse(open(os.path.join(PACKAGE, folder, name)).read())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module:
                    yield name, node.module
                elif isinstance(node, ast.Import):
                    yield from ((name, alias.name) for alias in node.names)


def test_imports_run_one_way():
    upward = {'quality': ('nnunet_ras.training',),
              'networks': ('nnunet_ras.training', 'nnunet_ras.quality', 'nnunet_ras.planning', 'nnunet_ras.dicom')}
    for folder, above in upward.items():
        wrong = [(name, module) for name, module in _imports(folder) if module.startswith(above)]
        assert not wrong, f'{folder}/ imports from a layer above it: {wrong}'
    code = ('import sys, nnunet_ras.quality.scoring; '
            'print(any(m.startswith("nnunet_ras.training") for m in sys.modules))')
    assert subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          check=True).stdout.strip() == 'False'
    assert ranking.write_training_ranking.__module__ == 'nnunet_ras.quality.ranking'


def test_a_network_ablation_is_a_class_attribute():
    from nnunet_ras.networks.blocks import SpatialAttention
    from nnunet_ras.training import nnUNetTrainerRAS, nnUNetTrainerRAS_NoAttention, nnUNetTrainerRAS_NoDropout

    class Plan:  # what build_network_architecture reads of nnU-Net's ConfigurationManager
        network_arch_init_kwargs = {'n_stages': 3, 'features_per_stage': [4, 8, 16], 'conv_op': 'torch.nn.Conv3d',
                                    'strides': [[1, 1, 1], [2, 2, 2], [2, 2, 2]], 'norm_op': 'torch.nn.InstanceNorm3d',
                                    'norm_op_kwargs': {'affine': True}, 'nonlin': 'torch.nn.LeakyReLU'}

    assert nnUNetTrainerRAS.network_overrides == {} and nnUNetTrainerRAS_NoAttention.network_overrides == {
        'attention': False}

    def built(trainer):
        return trainer.build_network_architecture(None, Plan, 1, 2, False)

    assert any(isinstance(m, SpatialAttention) for m in built(nnUNetTrainerRAS).modules())
    assert not any(isinstance(m, SpatialAttention) for m in built(nnUNetTrainerRAS_NoAttention).modules())
    assert not any(isinstance(m, torch.nn.Dropout) for m in built(nnUNetTrainerRAS_NoDropout).modules())
    assert any(isinstance(m, torch.nn.Dropout) for m in built(nnUNetTrainerRAS).modules())


def test_every_short_schedule_comes_from_the_one_table():
    from nnunet_ras.training import schedules
    names = {f"{t.__name__}_{e}epoch{'s' if e > 1 else ''}_{i}iters"
             for t, table in schedules.SCHEDULES.items() for e, i in table}
    assert set(schedules.__all__) == names | {'nnUNetTrainerRAS_2epochs_5iters'}
    assert all(getattr(schedules, n).__module__ == schedules.__name__ for n in schedules.__all__)
