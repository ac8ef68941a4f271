"""nnU-Net trainers that train RAS U-Net.

Each class is a small nnU-Net trainer variant; nnU-Net finds them by name through ``nnUNet_extTrainer`` (see
``nnunet-ras trainer-path``). They work with the default ``nnUNetPlans`` of any data set (RAS U-Net is built from
the plan's topology) and with the plans of ``nnUNetPlannerRAS``.
"""
import numpy as np
import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import softmax_helper_dim1
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_ras.networks.ras_unet import build_ras_unet
from nnunet_ras.training.transforms import ClipToIntensityWindow


class nnUNetTrainerRAS(nnUNetTrainer):
    """RAS U-Net with the paper's Dice-only loss; nnU-Net's optimiser, schedule and augmentation otherwise.

    The Dice is computed over the whole batch (one soft Dice per foreground class over all samples of the batch,
    the paper's Dice loss), whatever the plan's ``batch_dice`` says, so that a small structure absent from some
    patches, such as a tumour, still gets a Dice term from the patches that hold it. Deep-supervision outputs are
    weighted as in nnU-Net.
    """

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager,
                                   configuration_manager: ConfigurationManager,
                                   num_input_channels: int,
                                   num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return build_ras_unet(configuration_manager.network_arch_init_kwargs, num_input_channels,
                              num_output_channels, enable_deep_supervision)

    def _build_loss(self):
        regions = self.label_manager.has_regions
        loss = MemoryEfficientSoftDiceLoss(apply_nonlin=torch.sigmoid if regions else softmax_helper_dim1,
                                           batch_dice=True, do_bg=regions, smooth=1e-5, ddp=self.is_ddp)
        if not self.enable_deep_supervision:
            return loss
        weights = np.array([1 / (2 ** i) for i in range(len(self._get_deep_supervision_scales()))])
        weights[-1] = 0  # nnU-Net ignores the coarsest output
        return DeepSupervisionWrapper(loss, weights / weights.sum())

    def get_training_transforms(self, *args, **kwargs):
        """nnU-Net's augmentation, preceded by the plan's CT window (see ``ClipToIntensityWindow``)."""
        transforms = super().get_training_transforms(*args, **kwargs)
        windows = self.configuration_manager.network_arch_init_kwargs.get('intensity_window')
        if windows is not None:
            transforms.transforms.insert(0, ClipToIntensityWindow(windows))
        return transforms


class nnUNetTrainerRAS_DiceCE(nnUNetTrainerRAS):
    """RAS U-Net with nnU-Net's default Dice + cross-entropy loss: the loss ablation of nnUNetTrainerRAS."""

    def _build_loss(self):
        return nnUNetTrainer._build_loss(self)
