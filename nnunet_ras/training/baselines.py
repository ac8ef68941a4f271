"""Baseline and ablation trainers: each a small nnU-Net trainer variant that works with default plans.

nnU-Net's own ``nnUNetTrainer`` is the 3D U-Net baseline. The baselines change the network (SE U-Net, residual SE
U-Net, V-Net, seed 003's 2.5D hybrid); the RAS ablations subclass ``nnUNetTrainerRAS`` (keeping its Dice-only loss
and CT window) and change one thing each: a network switch, or the loss.
"""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import softmax_helper_dim1
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_ras.networks.baselines import build_residual_se_unet, build_se_unet, build_vnet
from nnunet_ras.networks.hybrid import build_hybrid_unet_25d
from nnunet_ras.networks.ras_unet import build_ras_unet
from nnunet_ras.training import schedules
from nnunet_ras.training.losses import LRDEHLoss, SquaredDenominatorDiceLoss, with_deep_supervision
from nnunet_ras.training.trainers import nnUNetTrainerRAS


class nnUNetTrainerSEUNet(nnUNetTrainer):
    """SE U-Net (seed 000's baseline): nnU-Net's plain U-Net with squeeze-and-excitation after every conv stack."""

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return build_se_unet(configuration_manager.network_arch_init_kwargs, num_input_channels,
                             num_output_channels, enable_deep_supervision)


class nnUNetTrainerResSEUNet(nnUNetTrainer):
    """Residual U-Net with SE: nnU-Net's residual-encoder U-Net with SE in every residual block and decoder stack."""

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return build_residual_se_unet(configuration_manager.network_arch_init_kwargs, num_input_channels,
                                      num_output_channels, enable_deep_supervision)


def _refuse_ignore_label(trainer: nnUNetTrainer) -> None:
    """Seed 003's losses have no ignore-label masking: say so instead of failing inside the one-hot encoding."""
    if trainer.label_manager.has_ignore_label:
        raise NotImplementedError(f"{type(trainer).__name__}: its loss does not support data sets with an ignore "
                                  f"label; use nnUNetTrainer's Dice + CE for them")


def _squared_dice(trainer: nnUNetTrainer) -> nn.Module:
    """V-Net's Dice loss, over the batch, on softmax (sigmoid for region training) outputs, deep-supervised."""
    _refuse_ignore_label(trainer)
    regions = trainer.label_manager.has_regions
    loss = SquaredDenominatorDiceLoss(apply_nonlin=torch.sigmoid if regions else softmax_helper_dim1,
                                      batch_dice=True, do_bg=regions)
    if not trainer.enable_deep_supervision:
        return loss
    return with_deep_supervision(loss, len(trainer._get_deep_supervision_scales()))


class nnUNetTrainerVNet(nnUNetTrainer):
    """V-Net (seed 000's baseline) with its squared-denominator Dice loss.

    The network keeps the plan's stages and widths, with one 5x5x5 residual conv per encoder and decoder stage
    (V-Net has 1 to 3): on the Hippocampus default plan that is 2.7x the multiply-accumulates of nnU-Net's default
    network per patch, where V-Net's counts would cost 4.9x.
    """

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return build_vnet(configuration_manager.network_arch_init_kwargs, num_input_channels, num_output_channels,
                          enable_deep_supervision)

    def _build_loss(self):
        return _squared_dice(self)


class nnUNetTrainerHybrid25D(nnUNetTrainer):
    """Seed 003's 2D-3D hybrid on the 3d_fullres configuration: each slice's mask from it and its two neighbours.

    Deep supervision is off (the network's single output, see ``HybridUNet25D``), as in nnU-Net's
    ``nnUNetTrainerNoDeepSupervision``.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return build_hybrid_unet_25d(configuration_manager.network_arch_init_kwargs, num_input_channels,
                                     num_output_channels)


class nnUNetTrainerRAS_NoAttention(nnUNetTrainerRAS):
    """RAS U-Net without the spatial attention module (separable convs kept): isolates the SAM."""

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return build_ras_unet(configuration_manager.network_arch_init_kwargs, num_input_channels,
                              num_output_channels, enable_deep_supervision, attention=False)


class nnUNetTrainerRAS_NoSeparable(nnUNetTrainerRAS):
    """RAS U-Net with full 3x3x3 convs in place of the separable ones (SAM kept): isolates the separable conv."""

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return build_ras_unet(configuration_manager.network_arch_init_kwargs, num_input_channels,
                              num_output_channels, enable_deep_supervision, separable=False)


class nnUNetTrainerRAS_NoDropout(nnUNetTrainerRAS):
    """RAS U-Net without the paper's encoder dropout (p = 0.5): isolates the dropout."""

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return build_ras_unet(configuration_manager.network_arch_init_kwargs, num_input_channels,
                              num_output_channels, enable_deep_supervision, encoder_dropout=0.)


class nnUNetTrainerRAS_SquaredDice(nnUNetTrainerRAS):
    """RAS U-Net with V-Net's squared-denominator Dice instead of the soft Dice: loss ablation."""

    def _build_loss(self):
        return _squared_dice(self)


class nnUNetTrainerRAS_LRDEHL(nnUNetTrainerRAS):
    """Fine-tunes a trained RAS U-Net with seed 003's LRDEHL (hard-negative MAE), at a tenth of nnU-Net's initial
    learning rate for a tenth of its epochs:

        nnUNetv2_train D 3d_fullres F -tr nnUNetTrainerRAS_LRDEHL -pretrained_weights \\
            .../nnUNetTrainerRAS__nnUNetPlans__3d_fullres/fold_F/checkpoint_final.pth

    nnU-Net's ``-pretrained_weights`` transfers every weight but the 1x1 segmentation heads (``.seg_layers.``),
    which restart from their initialisation; they are a few hundred weights and relearn within the first epoch.
    """

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 1e-3
        self.num_epochs = 100

    def _build_loss(self):
        _refuse_ignore_label(self)
        regions = self.label_manager.has_regions
        loss = LRDEHLoss(apply_nonlin=torch.sigmoid if regions else softmax_helper_dim1, do_bg=regions)
        if not self.enable_deep_supervision:
            return loss
        return with_deep_supervision(loss, len(self._get_deep_supervision_scales()))


BASELINE_TRAINERS = (nnUNetTrainerSEUNet, nnUNetTrainerResSEUNet, nnUNetTrainerVNet, nnUNetTrainerHybrid25D,
                     nnUNetTrainerRAS_NoAttention, nnUNetTrainerRAS_NoSeparable, nnUNetTrainerRAS_NoDropout,
                     nnUNetTrainerRAS_SquaredDice, nnUNetTrainerRAS_LRDEHL)

for _trainer in BASELINE_TRAINERS:
    schedules.short_schedule(_trainer, *schedules.SMOKE_TEST, doc='Smoke-test schedule (tests, installation checks).')
