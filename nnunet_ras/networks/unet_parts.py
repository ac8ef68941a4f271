"""The U-Net parts that RAS U-Net and V-Net share, and the reading of an nnU-Net plan's class names. As in
dynamic-network-architectures' U-Nets (Isensee et al., "nnU-Net", Nature Methods 2021), encoder and decoder build
their own module lists (here from one stage factory per network); every encoder stage's output is a skip."""
import pydoc
from typing import Callable, List, Sequence, Type, Union

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.helper import maybe_convert_scalar_to_list
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn
from torch.nn.modules.conv import _ConvNd

from nnunet_ras.networks.blocks import cat_channels

PLAN_CLASS_KEYS = ('conv_op', 'norm_op', 'dropout_op', 'nonlin')


def locate_plan_classes(arch_kwargs: dict, keys: Sequence[str] = PLAN_CLASS_KEYS) -> dict:
    """The plan's ``arch_kwargs`` with the class names nnU-Net stores (``torch.nn.Conv3d``) replaced by the classes,
    as nnU-Net's ``get_network_from_plans`` imports them; ImportError names a key whose class cannot be imported."""
    kwargs = dict(arch_kwargs)
    for key in keys:
        if isinstance(kwargs.get(key), str):
            located = pydoc.locate(kwargs[key])
            if located is None:
                raise ImportError(f"cannot import {kwargs[key]!r} named by the plan's '{key}'")
            kwargs[key] = located
    return kwargs


def per_axis(conv_op: Type[_ConvNd], value: Union[int, Sequence[int]]) -> List[int]:
    """A kernel size or stride per spatial axis of ``conv_op`` (a scalar repeated, as nnU-Net's plans allow)."""
    return [int(v) for v in maybe_convert_scalar_to_list(conv_op, value)]


class StagedEncoder(nn.Module):
    """An encoder of ``stages`` (each an ``nn.Sequential``) that each feed the next; every stage's output is a skip.

    ``make_stage(s, in_channels, features, stride)`` builds stage ``s`` (its down-sampling included).
    """

    def __init__(self, input_channels: int, features_per_stage: Sequence[int], conv_op: Type[_ConvNd],
                 strides: Sequence[Sequence[int]], make_stage: Callable[[int, int, int, Sequence[int]], nn.Sequential]):
        super().__init__()
        self.conv_op, self.output_channels, self.strides = conv_op, list(features_per_stage), strides
        channels = [input_channels, *features_per_stage[:-1]]
        self.stages = nn.ModuleList(make_stage(s, *stage)
                                    for s, stage in enumerate(zip(channels, features_per_stage, strides)))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        size = 0
        for stage, stride in zip(self.stages, self.strides):
            input_size = [i // s for i, s in zip(input_size, stride)]
            size += sum(m.compute_conv_feature_map_size(input_size) for m in stage
                        if hasattr(m, 'compute_conv_feature_map_size'))
        return int(size)


class UpsampleHalving(nn.Module):
    """Up-sampling that halves the channels: a 1x1 conv at the coarse resolution, then nearest-neighbour
    interpolation to the skip's size. Same result as interpolating first, at a fraction of the compute, with 1/8 of
    the weights of the 2x2x2 transposed conv of nnU-Net's default decoder (Zhang et al. name the model's size as
    its weakness), and it accepts input sizes that the pooling strides do not divide."""

    def __init__(self, conv_op: Type[_ConvNd], in_channels: int, out_channels: int, bias: bool = True):
        super().__init__()
        self.project = conv_op(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        return nn.functional.interpolate(self.project(x), size=tuple(size), mode='nearest')


class StagedDecoder(nn.Module):
    """A U-Net decoder of ``upsamplers``, ``stages`` and ``seg_layers`` (coarsest first): per stage, up-sample,
    concatenate the skip, run the stage, and (with ``deep_supervision``) a 1x1 seg head.

    ``make_upsampler(in_channels, skip_channels, stride)`` builds an up-sampler: an ``UpsampleHalving`` (called with
    the skip's size) or a module whose stride gives the skip's size (a transposed conv). ``make_stage(s,
    in_channels, out_channels)`` builds the stage above encoder stage ``s``; it reports ``out_channels``.
    ``deep_supervision`` (switched by nnU-Net's trainer through ``network.decoder.deep_supervision``) returns one
    output per decoder stage, highest resolution first; otherwise only the full-resolution logits.
    """

    def __init__(self, encoder: StagedEncoder, num_classes: int, deep_supervision: bool,
                 make_upsampler: Callable[[int, int, Sequence[int]], nn.Module],
                 make_stage: Callable[[int, int, int], nn.Module]):
        super().__init__()
        self.deep_supervision, self.encoder_strides, self.num_classes = deep_supervision, encoder.strides, num_classes
        upsamplers, stages, seg_layers = [], [], []
        for s in range(len(encoder.output_channels) - 1, 0, -1):
            below, skip = encoder.output_channels[s], encoder.output_channels[s - 1]
            upsamplers.append(make_upsampler(below, skip, encoder.strides[s]))
            stages.append(make_stage(s - 1, 2 * skip, skip))
            seg_layers.append(encoder.conv_op(skip, num_classes, 1, 1, 0, bias=True))
        self.upsamplers = nn.ModuleList(upsamplers)
        self.stages = nn.ModuleList(stages)
        self.seg_layers = nn.ModuleList(seg_layers)

    def forward(self, skips: List[torch.Tensor]) -> Union[torch.Tensor, List[torch.Tensor]]:
        x = skips[-1]
        outputs = []
        for s, (up, stage, seg) in enumerate(zip(self.upsamplers, self.stages, self.seg_layers)):
            skip = skips[-(s + 2)]
            x = up(x, skip.shape[2:]) if isinstance(up, UpsampleHalving) else up(x)
            x = stage(cat_channels((x, skip)))
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


class StagedUNet(nn.Module):
    """A U-Net of a ``StagedEncoder`` and a ``StagedDecoder`` (subclasses build both), initialised like nnU-Net's
    networks (He, negative slope 1e-2)."""
    encoder: StagedEncoder
    decoder: StagedDecoder

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        return self.decoder(self.encoder(x))

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
