"""The baselines the papers compare against, built from an nnU-Net plan's topology: SE U-Net and V-Net (Table 1 of
Zhang et al., see ``ras_unet``) and the 2D-3D hybrid of Xia and Jing's "MR Image Segmentation" (see ``hybrid``).

* ``SEUNet``: nnU-Net's plain U-Net (``PlainConvUNet``) with squeeze-and-excitation after every conv stack.
* ``ResidualSEUNet``: nnU-Net's residual-encoder U-Net (``ResidualEncoderUNet``) with SE in every residual block
  and after every decoder conv stack.
* ``VNet``: residual stages of 5x5x5 convs with PReLU, strided-conv down-sampling, transposed-conv up-sampling.
* ``HybridUNet25D``: the course project's 2D-3D hybrid: a 2D pre-activation ResNet U-Net that sees slices z-1, z,
  z+1 and predicts slice z, wrapped as a 3D-in / 3D-out module so nnU-Net's 3D pipeline (sliding window, stock
  ``nnUNetv2_predict``) runs it unchanged.

All return logits, take ``deep_supervision`` like nnU-Net's networks (the hybrid excepted, see its docstring) and
report ``compute_conv_feature_map_size``. The ``build_*`` functions take a plan's ``arch_kwargs`` as nnU-Net stores
them (class names as strings), from ``PlainConvUNet`` or ``ResidualEncoderUNet`` plans alike.
"""
from typing import Optional, Sequence, Type, Union

import numpy as np
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from dynamic_network_architectures.building_blocks.helper import get_matching_convtransp
from dynamic_network_architectures.building_blocks.regularization import SqueezeExcite
from dynamic_network_architectures.building_blocks.residual import BasicBlockD
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU, StackedConvBlocks
from torch import nn
from torch.nn.modules.conv import _ConvNd

from nnunet_ras.networks.unet_parts import StagedDecoder, StagedEncoder, StagedUNet, locate_plan_classes, per_axis

_PLAIN_UNET_KEYS = ('n_stages', 'features_per_stage', 'conv_op', 'kernel_sizes', 'strides', 'n_conv_per_stage',
                    'n_conv_per_stage_decoder', 'conv_bias', 'norm_op', 'norm_op_kwargs', 'dropout_op',
                    'dropout_op_kwargs', 'nonlin', 'nonlin_kwargs')


def _per_stage(value: Union[int, Sequence], n_stages: int) -> list:
    return [value] * n_stages if np.isscalar(value) else list(value)


def plain_unet_kwargs(arch_kwargs: dict) -> dict:
    """``PlainConvUNet`` arguments from a ``PlainConvUNet`` or ``ResidualEncoderUNet`` plan.

    A residual-encoder plan gives its blocks per stage as ``n_blocks_per_stage``; a plain stage of two convs stands
    in for each (a basic residual block has two convs).
    """
    kwargs = locate_plan_classes(arch_kwargs)
    if 'n_conv_per_stage' not in kwargs:
        kwargs['n_conv_per_stage'] = 2
    missing = [k for k in ('n_stages', 'features_per_stage', 'conv_op', 'kernel_sizes', 'strides') if k not in kwargs]
    if missing:
        raise KeyError(f"the plan's architecture has no {missing}: it does not describe an nnU-Net U-Net")
    return {k: kwargs[k] for k in _PLAIN_UNET_KEYS if k in kwargs}


class SqueezeExcitation(SqueezeExcite):
    """dynamic-network-architectures' SE module, pooling over every spatial axis.

    Its ``SqueezeExcite`` averages over axes (2, 3) only, which in 3D leaves the last axis un-pooled (a gate per
    channel and column instead of per channel); this subclass pools globally, as SE defines. It also reports its
    feature maps so that it can sit inside dynamic-network-architectures' conv stacks.
    """

    def __init__(self, channels: int, conv_op: Type[_ConvNd], reduction: float = 1. / 16):
        super().__init__(channels, conv_op, rd_ratio=reduction, rd_divisor=8)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(tuple(range(2, x.ndim)), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.bn(self.fc1(pooled)))))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        return self.channels * int(np.prod(input_size, dtype=np.int64))  # the re-weighted features


def _append_se(stack: StackedConvBlocks, conv_op: Type[_ConvNd], reduction: float) -> None:
    """SE after the last conv of a conv stack (inside it, so the stack's forward and size count include it)."""
    stack.convs.append(SqueezeExcitation(stack.output_channels, conv_op, reduction))


class SEUNet(PlainConvUNet):
    """nnU-Net's plain U-Net with squeeze-and-excitation (SE U-Net, the baseline of Zhang et al.'s Table 1).

    Every encoder and decoder conv stack ends with an SE module that re-weights its channels by a gate computed from
    the globally pooled features. Arguments as ``PlainConvUNet``'s, plus the SE channel ``se_reduction``.
    """

    def __init__(self, *args, se_reduction: float = 1. / 16, **kwargs):
        super().__init__(*args, **kwargs)
        conv_op = self.encoder.conv_op
        for stage in self.encoder.stages:
            _append_se(stage[-1], conv_op, se_reduction)
        for stack in self.decoder.stages:
            _append_se(stack, conv_op, se_reduction)


class ResidualSEUNet(ResidualEncoderUNet):
    """nnU-Net's residual-encoder U-Net with squeeze-and-excitation: every residual block re-weights its residual
    branch with SE before the addition (SE-ResNet), and every decoder conv stack ends with SE.

    Arguments as ``ResidualEncoderUNet``'s, plus ``se_reduction``.
    """

    def __init__(self, *args, se_reduction: float = 1. / 16, **kwargs):
        super().__init__(*args, **kwargs)
        conv_op = self.encoder.conv_op
        for block in self.encoder.modules():
            if isinstance(block, BasicBlockD):
                block.apply_se = True  # BasicBlockD's own switch, with the globally pooling SE module
                block.squeeze_excitation = SqueezeExcitation(block.output_channels, conv_op, se_reduction)
        for stack in self.decoder.stages:
            _append_se(stack, conv_op, se_reduction)


def build_se_unet(arch_kwargs: dict, input_channels: int, num_classes: int,
                  deep_supervision: bool = False) -> SEUNet:
    """SE U-Net with the plan's topology (from a PlainConvUNet or ResidualEncoderUNet plan)."""
    network = SEUNet(input_channels=input_channels, num_classes=num_classes, deep_supervision=deep_supervision,
                     **plain_unet_kwargs(arch_kwargs))
    network.apply(network.initialize)
    return network


def build_residual_se_unet(arch_kwargs: dict, input_channels: int, num_classes: int,
                           deep_supervision: bool = False) -> ResidualSEUNet:
    """Residual SE U-Net with the plan's topology.

    A residual-encoder plan's ``n_blocks_per_stage`` is kept; from a plain plan each stage gets one basic block (two
    convs, as the plain U-Net's stage), so the network stays comparable to nnU-Net's default in size.
    """
    kwargs = plain_unet_kwargs(arch_kwargs)
    n_blocks = locate_plan_classes(arch_kwargs).get('n_blocks_per_stage', 1)
    del kwargs['n_conv_per_stage']
    network = ResidualSEUNet(input_channels=input_channels, num_classes=num_classes,
                             deep_supervision=deep_supervision, n_blocks_per_stage=n_blocks, **kwargs)
    network.apply(network.initialize)
    return network


class ResidualConvStage(nn.Module):
    """A V-Net stage: ``num_convs`` conv-norm-nonlin layers (the last without nonlin), plus the stage input
    (identity, or a 1x1 conv + norm where the channel count changes), then the nonlin."""

    def __init__(self, num_convs: int, conv_op: Type[_ConvNd], in_channels: int, out_channels: int,
                 kernel_size: Sequence[int], conv_bias: bool, norm_op, norm_op_kwargs, nonlin, nonlin_kwargs):
        super().__init__()
        self.out_channels = out_channels
        layers = [ConvDropoutNormReLU(conv_op, in_channels if i == 0 else out_channels, out_channels, kernel_size, 1,
                                      conv_bias, norm_op, norm_op_kwargs, None, None,
                                      nonlin if i < num_convs - 1 else None, nonlin_kwargs)
                  for i in range(num_convs)]
        self.convs = nn.Sequential(*layers)
        self.shortcut = nn.Identity() if in_channels == out_channels else ConvDropoutNormReLU(
            conv_op, in_channels, out_channels, 1, 1, False, norm_op, norm_op_kwargs)
        self.nonlin = nonlin(**(nonlin_kwargs or {})) if nonlin is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlin(self.convs(x) + self.shortcut(x))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        maps = len(self.convs) + (0 if isinstance(self.shortcut, nn.Identity) else 1)
        return maps * self.out_channels * int(np.prod(input_size, dtype=np.int64))


def vnet_encoder(input_channels: int, features_per_stage: Sequence[int], conv_op: Type[_ConvNd],
                 kernel_sizes: Sequence[Sequence[int]], strides: Sequence[Sequence[int]],
                 n_conv_per_stage: Sequence[int], conv_bias: bool, norm_op, norm_op_kwargs, nonlin,
                 nonlin_kwargs) -> StagedEncoder:
    """Per stage: a strided conv (kernel = stride, as V-Net's 2x2x2 down-convolution) into the stage's width where
    the plan pools, then a residual conv stage."""
    def stage(i: int, channels: int, features: int, stride: Sequence[int]) -> nn.Sequential:
        layers = []
        if any(s > 1 for s in stride):
            layers.append(ConvDropoutNormReLU(conv_op, channels, features, stride, stride, conv_bias, norm_op,
                                              norm_op_kwargs, None, None, nonlin, nonlin_kwargs))
            channels = features
        layers.append(ResidualConvStage(n_conv_per_stage[i], conv_op, channels, features, kernel_sizes[i], conv_bias,
                                        norm_op, norm_op_kwargs, nonlin, nonlin_kwargs))
        return nn.Sequential(*layers)

    return StagedEncoder(input_channels, features_per_stage, conv_op, strides, stage)


def vnet_decoder(encoder: StagedEncoder, num_classes: int, n_conv_per_stage: Sequence[int], deep_supervision: bool,
                 kernel_sizes: Sequence[Sequence[int]], conv_bias: bool, norm_op, norm_op_kwargs, nonlin,
                 nonlin_kwargs) -> StagedDecoder:
    """Per stage: transposed conv (kernel = stride) to the skip's width, concatenation with the skip, a residual
    conv stage, a 1x1 seg head. ``deep_supervision`` as in nnU-Net's decoders (list, highest resolution first)."""
    conv_op, transposed_conv = encoder.conv_op, get_matching_convtransp(encoder.conv_op)
    return StagedDecoder(
        encoder, num_classes, deep_supervision,
        lambda below, skip, stride: transposed_conv(below, skip, stride, stride, bias=conv_bias),
        lambda s, channels, skip: ResidualConvStage(n_conv_per_stage[s], conv_op, channels, skip, kernel_sizes[s],
                                                    conv_bias, norm_op, norm_op_kwargs, nonlin, nonlin_kwargs))


class VNet(StagedUNet):
    """V-Net (Milletari et al. 2016) on an nnU-Net plan's topology: residual stages of large-kernel convs with PReLU,
    strided-conv down-sampling, transposed-conv up-sampling, skip concatenation.

    Args:
        input_channels, num_classes, n_stages, features_per_stage, conv_op, strides, conv_bias, norm_op,
            norm_op_kwargs: as in the plan.
        kernel_sizes: per stage; ``build_vnet`` enlarges the plan's 3s to 5s (V-Net's 5x5x5).
        n_conv_per_stage, n_conv_per_stage_decoder: convs per residual stage.
        nonlin, nonlin_kwargs: V-Net's ``nn.PReLU`` by default.
        deep_supervision: one output per decoder stage, as nnU-Net expects.
    """

    def __init__(self, input_channels: int, num_classes: int, n_stages: int,
                 features_per_stage: Union[int, Sequence[int]], conv_op: Type[_ConvNd],
                 kernel_sizes: Sequence[Union[int, Sequence[int]]], strides: Sequence[Union[int, Sequence[int]]],
                 n_conv_per_stage: Union[int, Sequence[int]] = 1,
                 n_conv_per_stage_decoder: Union[int, Sequence[int]] = 1,
                 conv_bias: bool = True, norm_op: Optional[Type[nn.Module]] = None,
                 norm_op_kwargs: Optional[dict] = None, nonlin: Optional[Type[nn.Module]] = nn.PReLU,
                 nonlin_kwargs: Optional[dict] = None, deep_supervision: bool = False):
        super().__init__()
        if np.isscalar(features_per_stage):
            features_per_stage = [features_per_stage * 2 ** i for i in range(n_stages)]
        kernel_sizes = [per_axis(conv_op, k) for k in _per_stage(kernel_sizes, n_stages)]
        strides = [per_axis(conv_op, s) for s in _per_stage(strides, n_stages)]
        self.encoder = vnet_encoder(input_channels, features_per_stage, conv_op, kernel_sizes, strides,
                                   _per_stage(n_conv_per_stage, n_stages), conv_bias, norm_op, norm_op_kwargs,
                                   nonlin, nonlin_kwargs)
        self.decoder = vnet_decoder(self.encoder, num_classes, _per_stage(n_conv_per_stage_decoder, n_stages - 1),
                                   deep_supervision, kernel_sizes, conv_bias, norm_op, norm_op_kwargs, nonlin,
                                   nonlin_kwargs)


VNET_KERNEL = 5


def build_vnet(arch_kwargs: dict, input_channels: int, num_classes: int, deep_supervision: bool = False,
               n_conv_per_stage: Union[int, Sequence[int]] = 1,
               n_conv_per_stage_decoder: Union[int, Sequence[int]] = 1) -> VNet:
    """V-Net with the plan's stages, widths, strides and norm; PReLU; the plan's kernel sizes with every 3 enlarged
    to 5 (a plan's 1, on an anisotropic axis, stays 1, as its 3x3x3 would have)."""
    kwargs = plain_unet_kwargs(arch_kwargs)
    n_stages = kwargs['n_stages']
    kernel_sizes = [[VNET_KERNEL if k == 3 else k for k in per_axis(kwargs['conv_op'], kernel)]
                    for kernel in _per_stage(kwargs['kernel_sizes'], n_stages)]
    network = VNet(input_channels, num_classes, n_stages, kwargs['features_per_stage'], kwargs['conv_op'],
                   kernel_sizes, kwargs['strides'], n_conv_per_stage, n_conv_per_stage_decoder,
                   kwargs.get('conv_bias', True), kwargs.get('norm_op'), kwargs.get('norm_op_kwargs'),
                   nn.PReLU, None, deep_supervision)
    network.apply(network.initialize)
    return network
