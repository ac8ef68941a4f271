from nnunet_ras.networks.blocks import IntensityWindow, RASConv, SeparableConv, SpatialAttention
from nnunet_ras.networks.ras_unet import RASUNet, build_ras_unet, ras_kwargs_from_plan

__all__ = ['IntensityWindow', 'RASConv', 'SeparableConv', 'SpatialAttention', 'RASUNet', 'build_ras_unet',
           'ras_kwargs_from_plan']
