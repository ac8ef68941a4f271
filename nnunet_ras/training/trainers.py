"""nnU-Net trainers that train RAS U-Net: the paper's model and its ablations.

Each class is a small nnU-Net trainer variant; nnU-Net finds them by name through ``nnUNet_extTrainer`` (see
``nnunet-ras trainer-path``). They work with the default ``nnUNetPlans`` of any data set (RAS U-Net is built from
the plan's topology) and with the plans of ``nnUNetPlannerRAS``. A variant sets class attributes, the nnU-Net way:
``network_overrides`` (arguments of the network builder) or ``_core_loss`` (the loss of one output).
"""
from typing import Callable

import torch
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunet_ras.cpu_memory import keep_freed_memory
from nnunet_ras.networks.ras_unet import build_ras_unet
from nnunet_ras.training.losses import DeepSupervisedLoss, lrdeh_loss, squared_dice_loss
from nnunet_ras.training.transforms import ClipToIntensityWindow


class PlanNetwork:
    """Mixin for an nnU-Net trainer: the network is ``network_builder(plan's arch_kwargs, input channels, outputs,
    deep_supervision, **network_overrides)``, so that a network ablation is a class that sets ``network_overrides``.

    Training on the CPU, the process keeps freed memory for reuse (``cpu_memory.keep_freed_memory``: a step 1.3-2.3x
    faster; ``nnUNet_ras_keep_cpu_memory=0`` switches it off)."""
    network_builder: Callable[..., nn.Module]
    network_overrides: dict = {}

    def initialize(self):
        if self.device.type == 'cpu':
            keep_freed_memory()
        super().initialize()

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return cls.network_builder(configuration_manager.network_arch_init_kwargs, num_input_channels,
                                   num_output_channels, enable_deep_supervision, **cls.network_overrides)


class nnUNetTrainerRAS(PlanNetwork, DeepSupervisedLoss, nnUNetTrainer):
    """RAS U-Net (Zhang et al., see ``networks.ras_unet``) with the paper's Dice-only loss; nnU-Net's optimiser,
    schedule and augmentation otherwise.

    The Dice is computed over the whole batch (one soft Dice per foreground class over all samples of the batch,
    the paper's Dice loss), whatever the plan's ``batch_dice`` says, so that a small structure absent from some
    patches, such as a tumour, still gets a Dice term from the patches that hold it. Deep-supervision outputs are
    weighted as in nnU-Net.
    """
    network_builder = staticmethod(build_ras_unet)

    def _core_loss(self) -> nn.Module:
        return MemoryEfficientSoftDiceLoss(apply_nonlin=self.output_nonlin(), batch_dice=True,
                                           do_bg=self.label_manager.has_regions, smooth=1e-5, ddp=self.is_ddp)

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


class nnUNetTrainerRAS_NoAttention(nnUNetTrainerRAS):
    """RAS U-Net without the spatial attention module (separable convs kept): isolates the SAM."""
    network_overrides = {'attention': False}


class nnUNetTrainerRAS_NoSeparable(nnUNetTrainerRAS):
    """RAS U-Net with full 3x3x3 convs in place of the separable ones (SAM kept): isolates the separable conv."""
    network_overrides = {'separable': False}


class nnUNetTrainerRAS_NoDropout(nnUNetTrainerRAS):
    """RAS U-Net without the paper's encoder dropout (p = 0.5): isolates the dropout."""
    network_overrides = {'encoder_dropout': 0.}


class nnUNetTrainerRAS_SquaredDice(nnUNetTrainerRAS):
    """RAS U-Net with V-Net's squared-denominator Dice instead of the soft Dice: loss ablation."""
    _core_loss = squared_dice_loss


class nnUNetTrainerRAS_LRDEHL(nnUNetTrainerRAS):
    """Fine-tunes a trained RAS U-Net with the label-related dropout element hinge loss (LRDEHL, hard-negative MAE;
    see ``losses.LRDEHLoss``), at a tenth of nnU-Net's initial learning rate for a tenth of its epochs:

        nnUNetv2_train D 3d_fullres F -tr nnUNetTrainerRAS_LRDEHL -pretrained_weights \\
            .../nnUNetTrainerRAS__nnUNetPlans__3d_fullres/fold_F/checkpoint_final.pth

    nnU-Net's ``-pretrained_weights`` transfers every weight but the 1x1 segmentation heads (``.seg_layers.``),
    which restart from their initialisation; they are a few hundred weights and relearn within the first epoch.
    """
    _core_loss = lrdeh_loss

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 1e-3
        self.num_epochs = 100
