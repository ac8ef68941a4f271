"""RAS U-Net: a U-Net whose every conv block is a RAS conv (seed 000, SPEC section 1).

The topology (stages, pooling strides, features per stage, conv dimension, norm and nonlin) comes from an nnU-Net
plan, so the network fits any data set. With the paper's 5 stages it has the paper's 9 RAS convs.
"""
import pydoc
from typing import List, Optional, Sequence, Type, Union

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.helper import get_matching_pool_op
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn
from torch.nn.modules.conv import _ConvNd

from nnunet_ras.networks.blocks import IntensityWindow, RASConv

RAS_UNET_CLASS_NAME = 'nnunet_ras.networks.ras_unet.RASUNet'
RAS_KWARGS_REQUIRING_IMPORT = ('conv_op', 'norm_op', 'nonlin')
# the keys every nnU-Net U-Net plan (PlainConvUNet, ResidualEncoderUNet) shares and that define RAS U-Net's topology
_TOPOLOGY_KEYS = ('n_stages', 'features_per_stage', 'conv_op', 'strides', 'conv_bias', 'norm_op', 'norm_op_kwargs',
                  'nonlin', 'nonlin_kwargs')


def _stride_list(stride: Union[int, Sequence[int]], dim: int) -> List[int]:
    return [int(stride)] * dim if np.isscalar(stride) else [int(s) for s in stride]


class StagedEncoder(nn.Module):
    """An encoder whose ``stages`` (an ``nn.ModuleList``) each feed the next; every stage's output is a skip."""

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class RASEncoder(StagedEncoder):
    """Per stage: max-pool by the plan's stride (if any), one RAS conv, dropout (the paper's p = 0.5).

    The dropped-out features feed both the next stage and the skip connection, as in the paper's U-Net.
    """

    def __init__(self, input_channels: int, features_per_stage: Sequence[int], conv_op: Type[_ConvNd],
                 strides: Sequence[Sequence[int]], conv_bias: bool, norm_op, norm_op_kwargs, nonlin, nonlin_kwargs,
                 encoder_dropout: float, attention_reduction: int, attention: bool = True, separable: bool = True):
        super().__init__()
        self.conv_op = conv_op
        self.output_channels = list(features_per_stage)
        self.strides = strides
        pool_op = get_matching_pool_op(conv_op, pool_type='max')
        stages = []
        channels = input_channels
        for features, stride in zip(features_per_stage, strides):
            layers = [pool_op(stride, stride)] if any(s > 1 for s in stride) else []
            layers.append(RASConv(conv_op, channels, features, norm_op, norm_op_kwargs, nonlin, nonlin_kwargs,
                                  attention_reduction, conv_bias, attention, separable))
            if encoder_dropout > 0:
                layers.append(nn.Dropout(encoder_dropout))
            stages.append(nn.Sequential(*layers))
            channels = features
        self.stages = nn.ModuleList(stages)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        size = 0
        for stage, stride in zip(self.stages, self.strides):
            input_size = [i // s for i, s in zip(input_size, stride)]
            ras = next(m for m in stage if isinstance(m, RASConv))
            size += ras.compute_conv_feature_map_size(input_size)
        return int(size)


class UpsampleHalving(nn.Module):
    """Up-sampling that halves the channels: a 1x1 conv at the coarse resolution, then nearest-neighbour
    interpolation to the skip's size. Same result as interpolating first, at a fraction of the compute, with 1/8 of
    the weights of the 2x2x2 transposed conv of nnU-Net's default decoder (the seed names the model's size as its
    weakness), and it accepts input sizes that the pooling strides do not divide."""

    def __init__(self, conv_op: Type[_ConvNd], in_channels: int, out_channels: int, bias: bool = True):
        super().__init__()
        self.project = conv_op(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return nn.functional.interpolate(self.project(x), size=tuple(size), mode='nearest')


class StagedDecoder(nn.Module):
    """A U-Net decoder made of ``upsamplers``, ``stages`` and ``seg_layers`` (coarsest first): per stage, up-sample,
    concatenate the skip, run the stage, and (with ``deep_supervision``) a seg head. Subclasses build the lists and
    set ``deep_supervision``, ``encoder_strides`` and ``num_classes``; ``upsample`` says how an up-sampler is called.
    """

    def upsample(self, upsampler: nn.Module, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return upsampler(x, skip.shape[2:])

    def forward(self, skips: List[torch.Tensor]) -> Union[torch.Tensor, List[torch.Tensor]]:
        x = skips[-1]
        outputs = []
        for s, (up, stage, seg) in enumerate(zip(self.upsamplers, self.stages, self.seg_layers)):
            skip = skips[-(s + 2)]
            x = stage(torch.cat((self.upsample(up, x, skip), skip), 1))
            if self.deep_supervision or s == len(self.stages) - 1:
                outputs.append(seg(x))
        outputs = outputs[::-1]
        return outputs if self.deep_supervision else outputs[0]

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        sizes = []
        for stride in self.encoder_strides[:-1]:
            input_size = [i // s for i, s in zip(input_size, stride)]
            sizes.append(input_size)
        total = 0
        for s, stage in enumerate(self.stages):
            size = sizes[-(s + 1)]
            voxels = int(np.prod(size, dtype=np.int64))
            total += stage.out_channels * voxels  # the up-sampling conv
            total += stage.compute_conv_feature_map_size(size)
            if self.deep_supervision or s == len(self.stages) - 1:
                total += self.num_classes * voxels
        return int(total)


class RASDecoder(StagedDecoder):
    """Up-sampling (halving channels), skip concatenation, one RAS conv, a 1x1 seg head per stage.

    ``deep_supervision`` (switched by nnU-Net's trainer through ``network.decoder.deep_supervision``) returns one
    output per decoder stage, highest resolution first; otherwise only the full-resolution logits.
    """

    def __init__(self, encoder: RASEncoder, num_classes: int, deep_supervision: bool, conv_bias: bool,
                 norm_op, norm_op_kwargs, nonlin, nonlin_kwargs, attention_reduction: int, attention: bool = True,
                 separable: bool = True):
        super().__init__()
        self.deep_supervision = deep_supervision
        self.encoder_channels = encoder.output_channels
        self.encoder_strides = encoder.strides
        self.num_classes = num_classes
        upsamplers, stages, seg_layers = [], [], []
        for s in range(len(encoder.output_channels) - 1, 0, -1):
            below, skip = encoder.output_channels[s], encoder.output_channels[s - 1]
            upsamplers.append(UpsampleHalving(encoder.conv_op, below, skip, conv_bias))
            stages.append(RASConv(encoder.conv_op, 2 * skip, skip, norm_op, norm_op_kwargs, nonlin, nonlin_kwargs,
                                  attention_reduction, conv_bias, attention, separable))
            seg_layers.append(encoder.conv_op(skip, num_classes, 1, 1, 0, bias=True))
        self.upsamplers = nn.ModuleList(upsamplers)
        self.stages = nn.ModuleList(stages)
        self.seg_layers = nn.ModuleList(seg_layers)

class RASUNet(nn.Module):
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
        dim = 3 if issubclass(conv_op, nn.Conv3d) else 2
        if isinstance(features_per_stage, int):
            features_per_stage = [features_per_stage * 2 ** i for i in range(n_stages)]
        if len(features_per_stage) != n_stages or len(strides) != n_stages:
            raise ValueError(f"features_per_stage ({len(features_per_stage)}) and strides ({len(strides)}) need one "
                             f"entry per stage (n_stages={n_stages})")
        strides = [_stride_list(s, dim) for s in strides]
        if intensity_window is not None and len(intensity_window) != input_channels:
            raise ValueError(f"intensity_window needs one entry per input channel ({input_channels}), "
                             f"got {intensity_window}")
        self.window = IntensityWindow(intensity_window) \
            if intensity_window is not None and any(w is not None for w in intensity_window) else nn.Identity()
        self.encoder = RASEncoder(input_channels, features_per_stage, conv_op, strides, conv_bias, norm_op,
                                  norm_op_kwargs, nonlin, nonlin_kwargs, encoder_dropout, attention_reduction,
                                  attention, separable)
        self.decoder = RASDecoder(self.encoder, num_classes, deep_supervision, conv_bias, norm_op, norm_op_kwargs,
                                  nonlin, nonlin_kwargs, attention_reduction, attention, separable)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        return self.decoder(self.encoder(self.window(x)))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        """Number of feature-map elements one sample of ``input_size`` keeps for the backward pass.

        Counted like dynamic-network-architectures counts its U-Nets (the elements of every conv output), so
        nnU-Net's planner can compare it to its reference values when it fits patch and batch size.
        """
        return self.encoder.compute_conv_feature_map_size(input_size) + \
            self.decoder.compute_conv_feature_map_size(input_size)

    @staticmethod
    def initialize(module: nn.Module) -> None:
        InitWeights_He(1e-2)(module)


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
    kwargs = {**ras_kwargs_from_plan(arch_kwargs), **overrides}
    for key in RAS_KWARGS_REQUIRING_IMPORT:
        if isinstance(kwargs.get(key), str):
            located = pydoc.locate(kwargs[key])
            if located is None:
                raise ImportError(f"cannot import {kwargs[key]!r} named by the plan's '{key}'")
            kwargs[key] = located
    network = RASUNet(input_channels, num_classes, deep_supervision=deep_supervision, **kwargs)
    network.apply(network.initialize)
    return network
