"""The 2D-3D hybrid (HybridUNetX) of Xia Z. and Jing D., "MR Image Segmentation" (machine-learning course project,
Tsinghua University), wrapped so that nnU-Net's 3D pipeline runs it unchanged.

For every slice z of a 3D patch (axis 0, the slice axis after nnU-Net's transpose), slices z-1, z, z+1 (edge slices
replicated) of every input channel go into a 2D U-Net of pre-activation (ResNet v2) blocks, whose output is slice
z's logits. The module takes (B, C, D, H, W) and returns (B, K, D, H, W), so nnU-Net's sliding window, its 3d_fullres
configuration and stock ``nnUNetv2_predict`` treat it as any 3D network.
"""
from typing import Sequence, Type

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn
from torch.nn import functional as F

from nnunet_ras.networks.unet_parts import locate_plan_classes

CONTEXT_SLICES = 3  # z-1, z, z+1


def _norm_2d(norm_op_3d: Type[nn.Module]) -> Type[nn.Module]:
    """The 2D counterpart of a plan's 3D norm (InstanceNorm3d -> InstanceNorm2d, BatchNorm3d -> BatchNorm2d)."""
    return getattr(nn, norm_op_3d.__name__.replace('3d', '2d'))


class PreActivationBlock(nn.Module):
    """ResNet v2 basic block: norm -> nonlin -> 3x3 conv -> norm -> nonlin -> 3x3 conv, plus the input (identity, or
    a 1x1 conv where the channel count changes). Normalising before each conv keeps the identity path clean."""

    def __init__(self, in_channels: int, out_channels: int, norm_op: Type[nn.Module], norm_op_kwargs: dict,
                 nonlin: Type[nn.Module], nonlin_kwargs: dict):
        super().__init__()
        self.out_channels = out_channels
        self.branch = nn.Sequential(
            norm_op(in_channels, **norm_op_kwargs), nonlin(**nonlin_kwargs),
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            norm_op(out_channels, **norm_op_kwargs), nonlin(**nonlin_kwargs),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False))
        self.shortcut = nn.Identity() if in_channels == out_channels else \
            nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x) + self.shortcut(x)

    def feature_maps(self) -> int:
        """Feature maps per pixel the block keeps for the backward pass (both convs and the projection)."""
        return self.out_channels * (2 + (0 if isinstance(self.shortcut, nn.Identity) else 1))


class PreActivationUNet2D(nn.Module):
    """2D U-Net of pre-activation blocks: max-pool by the given in-plane strides, one block per stage and
    ``bottleneck_blocks`` at the deepest; bilinear up-sampling to the skip's size, concatenation, one block."""

    def __init__(self, input_channels: int, num_classes: int, features_per_stage: Sequence[int],
                 strides: Sequence[Sequence[int]], bottleneck_blocks: int, norm_op: Type[nn.Module],
                 norm_op_kwargs: dict, nonlin: Type[nn.Module], nonlin_kwargs: dict):
        super().__init__()
        self.strides = [list(s) for s in strides]
        block_args = (norm_op, norm_op_kwargs, nonlin, nonlin_kwargs)
        self.stem = nn.Conv2d(input_channels, features_per_stage[0], 3, padding=1, bias=False)
        stages, channels = [], features_per_stage[0]
        for s, (features, stride) in enumerate(zip(features_per_stage, self.strides)):
            n_blocks = bottleneck_blocks if s == len(features_per_stage) - 1 else 1
            blocks = [PreActivationBlock(channels if b == 0 else features, features, *block_args)
                      for b in range(n_blocks)]
            pool = [nn.MaxPool2d(stride, stride)] if any(i > 1 for i in stride) else []
            stages.append(nn.Sequential(*pool, *blocks))
            channels = features
        self.stages = nn.ModuleList(stages)
        self.decoder_stages = nn.ModuleList(
            PreActivationBlock(features_per_stage[s + 1] + features_per_stage[s], features_per_stage[s], *block_args)
            for s in range(len(features_per_stage) - 2, -1, -1))
        self.head = nn.Sequential(norm_op(features_per_stage[0], **norm_op_kwargs), nonlin(**nonlin_kwargs),
                                  nn.Conv2d(features_per_stage[0], num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        for skip, stage in zip(skips[-2::-1], self.decoder_stages):
            up = F.interpolate(x, size=skip.shape[2:], mode='bilinear', align_corners=False)
            x = stage(torch.cat((up, skip), 1))
        return self.head(x)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        size, pixels = list(input_size), []
        for stride in self.strides:
            size = [i // s for i, s in zip(size, stride)]
            pixels.append(int(np.prod(size, dtype=np.int64)))
        total = self.stages[0][0].out_channels * int(np.prod(input_size, dtype=np.int64))  # stem (pre-pool size)
        for stage, stage_pixels in zip(self.stages, pixels):
            total += sum(b.feature_maps() for b in stage if isinstance(b, PreActivationBlock)) * stage_pixels
        for stage, stage_pixels in zip(self.decoder_stages, pixels[-2::-1]):
            total += stage.feature_maps() * stage_pixels
        return int(total + self.head[-1].out_channels * pixels[0])


class HybridDecoderSwitch(nn.Module):
    """Holds the ``deep_supervision`` flag nnU-Net's trainer sets on ``network.decoder``. The hybrid has a single
    output: its 2D decoder's coarser outputs would not match the 3D plan's deep-supervision scales, which pool
    the slice axis too, so it trains without deep supervision (``nnUNetTrainerHybrid25D`` disables it)."""

    def __init__(self):
        super().__init__()
        self.deep_supervision = False


class HybridUNet25D(nn.Module):
    """2.5D U-Net: each slice's logits from its own and its two neighbouring slices, as a 3D-in / 3D-out module.

    Args:
        input_channels: image channels; the 2D U-Net sees ``3 * input_channels`` (slices z-1, z, z+1 of each).
        num_classes: segmentation outputs.
        features_per_stage: 2D widths (the project's: 16 base channels, doubling).
        strides: in-plane pooling stride of each stage, (y, x).
        bottleneck_blocks: pre-activation blocks at the deepest stage (the project's: 3).
        norm_op, norm_op_kwargs, nonlin, nonlin_kwargs: 2D norm and nonlin.
    """

    def __init__(self, input_channels: int, num_classes: int, features_per_stage: Sequence[int] = (16, 32, 64, 128),
                 strides: Sequence[Sequence[int]] = ((1, 1), (2, 2), (2, 2), (2, 2)), bottleneck_blocks: int = 3,
                 norm_op: Type[nn.Module] = nn.InstanceNorm2d, norm_op_kwargs: dict = None,
                 nonlin: Type[nn.Module] = nn.LeakyReLU, nonlin_kwargs: dict = None):
        super().__init__()
        self.unet = PreActivationUNet2D(CONTEXT_SLICES * input_channels, num_classes, features_per_stage, strides,
                                        bottleneck_blocks, norm_op, norm_op_kwargs or {'affine': True}, nonlin,
                                        nonlin_kwargs or {'inplace': True})
        self.decoder = HybridDecoderSwitch()

    @staticmethod
    def slice_stacks(x: torch.Tensor) -> torch.Tensor:
        """(B, C, D, H, W) -> (B * D, C * 3, H, W): per slice z, slices z-1, z, z+1 of every channel (edges
        replicated), so that each output slice sees exactly its neighbours."""
        b, c, d, h, w = x.shape
        padded = F.pad(x, (0, 0, 0, 0, 1, 1), mode='replicate')
        stacks = torch.stack([padded[:, :, k:k + d] for k in range(CONTEXT_SLICES)], 2)  # B, C, 3, D, H, W
        return stacks.permute(0, 3, 1, 2, 4, 5).reshape(b * d, c * CONTEXT_SLICES, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.decoder.deep_supervision:
            raise ValueError("HybridUNet25D has no deep-supervision outputs; train it with deep supervision off")
        b, _, d, h, w = x.shape
        logits = self.unet(self.slice_stacks(x))  # B * D, K, H, W
        return logits.reshape(b, d, -1, h, w).permute(0, 2, 1, 3, 4)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        return input_size[0] * self.unet.compute_conv_feature_map_size(input_size[1:])

    @staticmethod
    def initialize(module: nn.Module) -> None:
        InitWeights_He(1e-2)(module)


def build_hybrid_unet_25d(arch_kwargs: dict, input_channels: int, num_classes: int, deep_supervision: bool = False,
                          base_features: int = 16, max_stages: int = 4, bottleneck_blocks: int = 3) -> HybridUNet25D:
    """The hybrid for a 3D plan: the plan's in-plane pooling strides of its first ``max_stages`` stages (so nnU-Net's
    patch sizes, divisible by them, need no padding), the course project's widths (16 doubling) and the plan's norm
    and nonlin in their 2D form. ``deep_supervision`` is nnU-Net's flag (``HybridDecoderSwitch``): the hybrid has a
    single output and refuses to run with it on."""
    defaults = {'norm_op': 'torch.nn.InstanceNorm3d', 'nonlin': 'torch.nn.LeakyReLU'}
    arch_kwargs = locate_plan_classes({**arch_kwargs, **{k: v for k, v in defaults.items() if not arch_kwargs.get(k)}})
    conv_op, norm_op, nonlin = arch_kwargs['conv_op'], arch_kwargs['norm_op'], arch_kwargs['nonlin']
    if convert_conv_op_to_dim(conv_op) != 3:
        raise ValueError("the 2.5D hybrid needs a 3D configuration (it stacks neighbouring slices); "
                         f"this plan's conv_op is {conv_op.__name__}")
    strides = [[int(s) for s in stride[1:]] for stride in arch_kwargs['strides'][:max_stages]]
    network = HybridUNet25D(input_channels, num_classes, [base_features * 2 ** s for s in range(len(strides))],
                            strides, bottleneck_blocks, _norm_2d(norm_op), arch_kwargs.get('norm_op_kwargs'), nonlin,
                            arch_kwargs.get('nonlin_kwargs'))
    network.decoder.deep_supervision = deep_supervision
    network.apply(network.initialize)
    return network
