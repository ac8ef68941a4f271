"""RAS U-Net: a U-Net whose every conv block is a residual attention separable (RAS) conv, after Zhang F., Zhou Y.,
Yang Y., Chen Z., Gao Y. and Lin X., "可分离卷积与注意力机制结合的肝癌靶区CT图像自动分割" (automatic segmentation of
liver-cancer target volumes in CT combining separable convolution and attention; Department of Radiation Oncology,
Zhongshan Hospital, Fudan University), "the paper" below.

The topology (stages, pooling strides, features per stage, conv dimension, norm and nonlin) comes from an nnU-Net
plan, so the network fits any data set. With the paper's 5 stages it has the paper's 9 RAS convs.
"""
from typing import List, Optional, Sequence, Type, Union

import torch
from dynamic_network_architectures.building_blocks.helper import get_matching_pool_op
from torch import nn
from torch.nn.modules.conv import _ConvNd

from nnunet_ras.networks.blocks import Dropout, IntensityWindow, RASConv, Recomputed
from nnunet_ras.networks.unet_parts import (StagedDecoder, StagedEncoder, StagedUNet, UpsampleHalving,
                                            locate_plan_classes, per_axis)

RAS_UNET_CLASS_NAME = 'nnunet_ras.networks.ras_unet.RASUNet'
RAS_KWARGS_REQUIRING_IMPORT = ('conv_op', 'norm_op', 'nonlin')
# the keys every nnU-Net U-Net plan (PlainConvUNet, ResidualEncoderUNet) shares and that define RAS U-Net's topology
_TOPOLOGY_KEYS = ('n_stages', 'features_per_stage', 'conv_op', 'strides', 'conv_bias', 'norm_op', 'norm_op_kwargs',
                  'nonlin', 'nonlin_kwargs')


def ras_encoder(input_channels: int, features_per_stage: Sequence[int], conv_op: Type[_ConvNd],
                strides: Sequence[Sequence[int]], conv_bias: bool, norm_op, norm_op_kwargs, nonlin, nonlin_kwargs,
                encoder_dropout: float, attention_reduction: int, attention: bool = True,
                separable: bool = True) -> StagedEncoder:
    """Per stage: max-pool by the plan's stride (if any), one RAS conv, dropout (the paper's p = 0.5).

    The dropped-out features feed both the next stage and the skip connection, as in the paper's U-Net. The pooling
    is recomputed in the backward pass: its int64 indices would take as much memory as a quarter of its input.
    """
    pool_op = get_matching_pool_op(conv_op, pool_type='max')

    def stage(s: int, channels: int, features: int, stride: Sequence[int]) -> nn.Sequential:
        layers = [Recomputed(pool_op(stride, stride))] if any(k > 1 for k in stride) else []
        layers.append(RASConv(conv_op, channels, features, norm_op, norm_op_kwargs, nonlin, nonlin_kwargs,
                              attention_reduction, conv_bias, attention, separable))
        if encoder_dropout > 0:
            layers.append(Dropout(encoder_dropout))
        return nn.Sequential(*layers)

    return StagedEncoder(input_channels, features_per_stage, conv_op, strides, stage)


def ras_decoder(encoder: StagedEncoder, num_classes: int, deep_supervision: bool, conv_bias: bool, norm_op,
                norm_op_kwargs, nonlin, nonlin_kwargs, attention_reduction: int, attention: bool = True,
                separable: bool = True) -> StagedDecoder:
    """Per stage: up-sampling that halves the channels, skip concatenation, one RAS conv, a 1x1 seg head."""
    conv_op = encoder.conv_op
    return StagedDecoder(
        encoder, num_classes, deep_supervision,
        lambda below, skip, stride: UpsampleHalving(conv_op, below, skip, conv_bias),
        lambda s, channels, skip: RASConv(conv_op, channels, skip, norm_op, norm_op_kwargs, nonlin, nonlin_kwargs,
                                          attention_reduction, conv_bias, attention, separable))


class RASUNet(StagedUNet):
    """Residual attention separable U-Net.

    Args:
        input_channels: image channels.
        num_classes: segmentation outputs (nnU-Net's ``label_manager.num_segmentation_heads``).
        n_stages: resolution stages; the first has stride 1, each further one pools by its stride.
        features_per_stage: RAS conv width of each stage.
        conv_op: ``nn.Conv3d`` (separable conv (1,3,3)+(3,1,1)) or ``nn.Conv2d`` (3x3 + 1x1, see ``SeparableConv``).
        strides: pooling stride of each stage, as in nnU-Net's ``pool_op_kernel_sizes``.
        conv_bias, norm_op, norm_op_kwargs, nonlin, nonlin_kwargs: as in the nnU-Net plan.
        deep_supervision: return one output per decoder stage (nnU-Net switches it with
            ``decoder.deep_supervision``).
        encoder_dropout: dropout probability after every encoder RAS conv (the paper's 0.5).
        attention_reduction: channel reduction ratio inside the spatial attention module.
        intensity_window: per input channel ``(low, high)`` or ``None``; windowed channels are clipped and scaled to
            [-1, 1] inside the network (the paper's CT window is ``(-150, 150)``).
        attention, separable: ablation switches of every RAS conv (see ``RASConv``); the paper's model has both.

    ``forward`` returns logits: no softmax, nnU-Net applies its own nonlinearity.
    """

    def __init__(self,
                 input_channels: int,
                 num_classes: int,
                 n_stages: int,
                 features_per_stage: Union[int, Sequence[int]],
                 conv_op: Type[_ConvNd],
                 strides: Sequence[Union[int, Sequence[int]]],
                 conv_bias: bool = True,
                 norm_op: Optional[Type[nn.Module]] = None,
                 norm_op_kwargs: Optional[dict] = None,
                 nonlin: Optional[Type[nn.Module]] = None,
                 nonlin_kwargs: Optional[dict] = None,
                 deep_supervision: bool = False,
                 encoder_dropout: float = 0.5,
                 attention_reduction: int = 4,
                 intensity_window: Optional[Sequence[Optional[Sequence[float]]]] = None,
                 attention: bool = True,
                 separable: bool = True):
        super().__init__()
        if isinstance(features_per_stage, int):
            features_per_stage = [features_per_stage * 2 ** i for i in range(n_stages)]
        if len(features_per_stage) != n_stages or len(strides) != n_stages:
            raise ValueError(f"features_per_stage ({len(features_per_stage)}) and strides ({len(strides)}) need one "
                             f"entry per stage (n_stages={n_stages})")
        strides = [per_axis(conv_op, s) for s in strides]
        if intensity_window is not None and len(intensity_window) != input_channels:
            raise ValueError(f"intensity_window needs one entry per input channel ({input_channels}), "
                             f"got {intensity_window}")
        self.window = IntensityWindow(intensity_window) \
            if intensity_window is not None and any(w is not None for w in intensity_window) else nn.Identity()
        self.encoder = ras_encoder(input_channels, features_per_stage, conv_op, strides, conv_bias, norm_op,
                                  norm_op_kwargs, nonlin, nonlin_kwargs, encoder_dropout, attention_reduction,
                                  attention, separable)
        self.decoder = ras_decoder(self.encoder, num_classes, deep_supervision, conv_bias, norm_op, norm_op_kwargs,
                                  nonlin, nonlin_kwargs, attention_reduction, attention, separable)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        return super().forward(self.window(x))  # every RAS conv takes its input channels-last on the CPU


def ras_kwargs_from_plan(arch_kwargs: dict) -> dict:
    """RAS U-Net arguments from any nnU-Net U-Net plan (PlainConvUNet, ResidualEncoderUNet or RASUNet).

    Keeps the plan's topology; RAS-specific arguments already in the plan (dropout, attention, window, ablation
    switches) are kept.
    """
    missing = [k for k in ('n_stages', 'features_per_stage', 'conv_op', 'strides') if k not in arch_kwargs]
    if missing:
        raise KeyError(f"the plan's architecture has no {missing}: it does not describe a U-Net that RAS U-Net "
                       f"can be built from")
    ras_only = ('encoder_dropout', 'attention_reduction', 'intensity_window', 'attention', 'separable')
    return {k: arch_kwargs[k] for k in _TOPOLOGY_KEYS + ras_only if k in arch_kwargs}


def build_ras_unet(arch_kwargs: dict, input_channels: int, num_classes: int, deep_supervision: bool = False,
                   **overrides) -> RASUNet:
    """Builds and initialises a RAS U-Net from a plan's ``arch_kwargs`` (class names as strings or classes)."""
    kwargs = locate_plan_classes({**ras_kwargs_from_plan(arch_kwargs), **overrides}, RAS_KWARGS_REQUIRING_IMPORT)
    network = RASUNet(input_channels, num_classes, deep_supervision=deep_supervision, **kwargs)
    network.apply(network.initialize)
    return network
