"""nnUNetPlannerRAS: nnU-Net's experiment planner with the choices of the RAS U-Net paper (Zhang et al., see
``networks.ras_unet``).

* target spacing for CT: 1 mm in-plane and 3 mm between slices (the slice axis is the one with the coarsest median
  spacing); other modalities keep nnU-Net's choice; ``overwrite_target_spacing`` wins over both;
* the network is RAS U-Net, and patch and batch size are fitted to the memory budget with its own feature-map
  estimate (``RASUNet.compute_conv_feature_map_size``), against reference values calibrated from RAS U-Net's measured
  memory (``RAS_REFERENCE_CALIBRATION``), so that RAS plans use what nnU-Net's default plans use at the same budget;
* images and labels are resampled to the plans' grid, and the network's output back to the image's, with nnU-Net's
  torch resampling (``resample_torch_fornnunet``, that of its ``*_torchres`` planners) under nnU-Net's own rule for
  anisotropic data (in-plane linear, nearest between slices when one spacing is over 3x the others): on a full-size
  abdominal CT 0.1 s instead of 5.5 s for scikit-image's cubic in-plane resampling, in training and at every
  prediction alike, so the model sees at inference what it was trained on;
* CT channels are planned with ``NoNormalization`` and windowed inside the network (clip to [-150, 150] HU, scale to
  [-1, 1]), so stock ``nnUNetv2_predict`` needs nothing from this package but the network class; other channels
  keep nnU-Net's normalisation.

Planners are looked up by name only inside nnunetv2, so run this one through ``nnunet-ras plan_and_preprocess`` (or
``plan_experiment_dataset(..., nnUNetPlannerRAS)``).
"""
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
from nnunetv2.preprocessing.resampling.resample_torch import resample_torch_fornnunet
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunet_ras.networks.ras_unet import RAS_KWARGS_REQUIRING_IMPORT, RAS_UNET_CLASS_NAME, RASUNet, \
    ras_kwargs_from_plan

CT_WINDOW_HU = (-150., 150.)
# nnU-Net fits patch and batch size by comparing a network's feature-map count with reference values measured for
# its default U-Net (``UNet_reference_val_3d`` / ``_2d``); its residual-encoder planners scale them to their own
# network's measured memory. Where the budget bounds the patch (a full-size abdominal CT, bench/planner_memory.py),
# the RAS plan's training step took 0.68x the default plan's tensor peak (0.66x its peak resident memory) at a
# planner estimate 1.27x the default's: a RAS feature map costs 0.54x a default one, hence 1.27 / 0.68 = 1.88, so that
# RAS plans use what the default plans use and a RAS model is not given a smaller patch than it can afford. (The
# factor was 1.41 before the RAS conv's norms kept only their activated output; memory per feature map fell with it.)
RAS_REFERENCE_CALIBRATION = 1.88
CT_TARGET_SPACING_MM = (3., 1., 1.)  # (between slices, in-plane, in-plane)


def is_ct_channel(channel_name: str) -> bool:
    """nnU-Net's own rule: a channel named 'CT' (any case) gets CT handling."""
    return channel_name.strip().casefold() == 'ct'


class nnUNetPlannerRAS(ExperimentPlanner):
    def __init__(self, dataset_name_or_id: Union[str, int],
                 gpu_memory_target_in_gb: float = 8,
                 preprocessor_name: str = 'DefaultPreprocessor', plans_name: str = 'nnUNetRASPlans',
                 overwrite_target_spacing: Union[List[float], Tuple[float, ...]] = None,
                 suppress_transpose: bool = False,
                 ct_window: Optional[Sequence[float]] = CT_WINDOW_HU,
                 encoder_dropout: float = 0.5,
                 attention_reduction: int = 4):
        super().__init__(dataset_name_or_id, gpu_memory_target_in_gb, preprocessor_name, plans_name,
                         overwrite_target_spacing, suppress_transpose)
        self.UNet_class = RASUNet
        self.UNet_reference_val_3d = int(self.UNet_reference_val_3d * RAS_REFERENCE_CALIBRATION)
        self.UNet_reference_val_2d = int(self.UNet_reference_val_2d * RAS_REFERENCE_CALIBRATION)
        self.ct_window = ct_window
        self.encoder_dropout = encoder_dropout
        self.attention_reduction = attention_reduction

    def _channel_names(self) -> List[str]:
        return list(self.dataset_json['channel_names'].values())

    def _has_ct(self) -> bool:
        return any(is_ct_channel(c) for c in self._channel_names())

    def determine_fullres_target_spacing(self) -> np.ndarray:
        if self.overwrite_target_spacing is not None or not self._has_ct():
            return super().determine_fullres_target_spacing()
        median = np.median(np.vstack(self.dataset_fingerprint['spacings']), 0)
        target = np.full(len(median), CT_TARGET_SPACING_MM[1])
        target[int(np.argmax(median))] = CT_TARGET_SPACING_MM[0]
        return target

    def determine_normalization_scheme_and_whether_mask_is_used_for_norm(self) -> Tuple[List[str], List[bool]]:
        schemes, use_mask = super().determine_normalization_scheme_and_whether_mask_is_used_for_norm()
        if self.ct_window is None:
            return schemes, use_mask
        for i, name in enumerate(self._channel_names()):
            if is_ct_channel(name):
                schemes[i], use_mask[i] = 'NoNormalization', False
        return schemes, use_mask

    @staticmethod
    def _torch_resampling(is_seg: bool) -> dict:
        # force_separate_z None: nnU-Net's anisotropy rule decides, as in its default (scikit-image) resampling
        return {'is_seg': is_seg, 'force_separate_z': None, 'memefficient_seg_resampling': False}

    def determine_resampling(self, *args, **kwargs):
        return (resample_torch_fornnunet, self._torch_resampling(False),
                resample_torch_fornnunet, self._torch_resampling(True))

    def determine_segmentation_softmax_export_fn(self, *args, **kwargs):
        return resample_torch_fornnunet, self._torch_resampling(False)

    @staticmethod
    def static_estimate_VRAM_usage(patch_size: Tuple[int], input_channels: int, output_channels: int,
                                   arch_class_name: str, arch_kwargs: dict,
                                   arch_kwargs_req_import: Tuple[str, ...]):
        net = get_network_from_plans(RAS_UNET_CLASS_NAME, ras_kwargs_from_plan(arch_kwargs),
                                     RAS_KWARGS_REQUIRING_IMPORT, input_channels, output_channels, allow_init=False)
        return net.compute_conv_feature_map_size(patch_size)

    def get_plans_for_configuration(self, spacing, median_shape, data_identifier: str,
                                    approximate_n_voxels_dataset: float, _cache: dict) -> dict:
        plan = super().get_plans_for_configuration(spacing, median_shape, data_identifier,
                                                   approximate_n_voxels_dataset, _cache)
        windows = [list(self.ct_window) if self.ct_window is not None and is_ct_channel(c) else None
                   for c in self._channel_names()]
        arch_kwargs = ras_kwargs_from_plan(plan['architecture']['arch_kwargs'])
        arch_kwargs.update(encoder_dropout=self.encoder_dropout, attention_reduction=self.attention_reduction,
                           intensity_window=windows if any(w is not None for w in windows) else None)
        plan['architecture'] = {'network_class_name': RAS_UNET_CLASS_NAME, 'arch_kwargs': arch_kwargs,
                                '_kw_requires_import': RAS_KWARGS_REQUIRING_IMPORT}
        return plan
