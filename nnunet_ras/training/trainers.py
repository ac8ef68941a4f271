"""nnU-Net trainers that train RAS U-Net.

Each class is a small nnU-Net trainer variant; nnU-Net finds them by name through ``nnUNet_extTrainer`` (see
``nnunet-ras trainer-path``). They work with the default ``nnUNetPlans`` of any data set (RAS U-Net is built from
the plan's topology) and with the plans of ``nnUNetPlannerRAS``.
"""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.variants.loss.nnUNetTrainerDiceLoss import nnUNetTrainerDiceLoss
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_ras.networks.ras_unet import build_ras_unet


class nnUNetTrainerRAS(nnUNetTrainerDiceLoss):
    """RAS U-Net with the paper's Dice-only loss; nnU-Net's optimiser, schedule and augmentation otherwise."""

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager,
                                   configuration_manager: ConfigurationManager,
                                   num_input_channels: int,
                                   num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return build_ras_unet(configuration_manager.network_arch_init_kwargs, num_input_channels,
                              num_output_channels, enable_deep_supervision)


class nnUNetTrainerRAS_DiceCE(nnUNetTrainerRAS):
    """RAS U-Net with nnU-Net's default Dice + cross-entropy loss: the loss ablation of nnUNetTrainerRAS."""

    def _build_loss(self):
        return nnUNetTrainer._build_loss(self)
