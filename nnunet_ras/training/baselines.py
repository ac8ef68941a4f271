"""Baseline trainers: each a small nnU-Net trainer variant that works with default plans.

nnU-Net's own ``nnUNetTrainer`` is the 3D U-Net baseline. The baselines change the network: SE U-Net and V-Net (the
baselines Zhang et al. compare RAS U-Net with), a residual SE U-Net, and the 2D-3D hybrid of the "MR Image
Segmentation" course project (see ``networks.baselines`` and ``networks.hybrid``).
"""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_ras.networks.baselines import build_residual_se_unet, build_se_unet, build_vnet
from nnunet_ras.networks.hybrid import build_hybrid_unet_25d
from nnunet_ras.training.losses import DeepSupervisedLoss, squared_dice_loss
from nnunet_ras.training.trainers import PlanNetwork


class nnUNetTrainerSEUNet(PlanNetwork, nnUNetTrainer):
    """SE U-Net (Zhang et al.'s baseline): nnU-Net's plain U-Net with squeeze-and-excitation after every conv stack."""
    network_builder = staticmethod(build_se_unet)


class nnUNetTrainerResSEUNet(PlanNetwork, nnUNetTrainer):
    """Residual U-Net with SE: nnU-Net's residual-encoder U-Net with SE in every residual block and decoder stack."""
    network_builder = staticmethod(build_residual_se_unet)


class nnUNetTrainerVNet(PlanNetwork, DeepSupervisedLoss, nnUNetTrainer):
    """V-Net (Milletari, Navab and Ahmadi, "V-Net: Fully Convolutional Neural Networks for Volumetric Medical Image
    Segmentation", 3DV 2016; Zhang et al.'s baseline) with its squared-denominator Dice loss.

    The network keeps the plan's stages and widths, with one 5x5x5 residual conv per encoder and decoder stage
    (V-Net has 1 to 3): on the Hippocampus default plan that is 2.7x the multiply-accumulates of nnU-Net's default
    network per patch, where V-Net's counts would cost 4.9x.
    """
    network_builder = staticmethod(build_vnet)
    _core_loss = squared_dice_loss


class nnUNetTrainerHybrid25D(PlanNetwork, nnUNetTrainer):
    """The course project's 2D-3D hybrid on the 3d_fullres configuration: each slice's mask from it and its two
    neighbours.

    Deep supervision is off (the network's single output, see ``HybridUNet25D``), as in nnU-Net's
    ``nnUNetTrainerNoDeepSupervision``.
    """
    network_builder = staticmethod(build_hybrid_unet_25d)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False
