"""Building blocks of the RAS U-Net (Zhang et al., "automatic segmentation of liver-cancer target volumes in CT
combining separable convolution and attention"; see ``ras_unet``): separable conv, spatial attention, RAS conv.

Every block is parameterised by ``conv_op`` (``nn.Conv2d`` or ``nn.Conv3d``) like the blocks of
dynamic-network-architectures, and reports ``compute_conv_feature_map_size`` so that nnU-Net's planner can fit
patch and batch size to a memory budget.

Axis convention: nnU-Net transposes data so that axis 0 of a 3D patch is the axis with the coarsest spacing,
i.e. the slice axis of an anisotropic CT. In PyTorch's (D, H, W) order the in-plane kernel is therefore
(1, 3, 3) and the through-plane kernel (3, 1, 1).
"""
from typing import Optional, Sequence, Type

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from torch import nn
from torch.nn.modules.conv import _ConvNd


def _voxels(input_size: Sequence[int]) -> int:
    return int(np.prod(input_size, dtype=np.int64))


class SeparableConv(nn.Module):
    """A 3x3x3 convolution split into an in-plane conv followed by a through-plane conv.

    3D: kernel (1, 3, 3) then (3, 1, 1): 12 weights per channel pair instead of 27.
    2D: a 2D slice has no through-plane axis, so the through-plane conv degenerates to a 1x1 conv: the block
    becomes a 3x3 conv followed by a pointwise conv (the pointwise half of a depthwise-separable conv).

    The channel change happens in the cheaper of the two convs: the intermediate width is
    ``min(in_channels, out_channels)``.
    """

    def __init__(self, conv_op: Type[_ConvNd], in_channels: int, out_channels: int, bias: bool = True):
        super().__init__()
        dim = convert_conv_op_to_dim(conv_op)
        in_plane_kernel = (1, 3, 3) if dim == 3 else (3, 3)
        through_plane_kernel = (3, 1, 1) if dim == 3 else (1, 1)
        self.mid_channels = min(in_channels, out_channels)
        self.out_channels = out_channels
        # no bias in the first conv: a bias directly followed by another linear conv is redundant
        self.in_plane = conv_op(in_channels, self.mid_channels, in_plane_kernel,
                                padding=tuple(k // 2 for k in in_plane_kernel), bias=False)
        self.through_plane = conv_op(self.mid_channels, out_channels, through_plane_kernel,
                                     padding=tuple(k // 2 for k in through_plane_kernel), bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.through_plane(self.in_plane(x))

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        return (self.mid_channels + self.out_channels) * _voxels(input_size)


class FullConv(nn.Module):
    """The unsplit 3x3x3 (2D: 3x3) convolution that ``SeparableConv`` replaces: the separable-conv ablation."""

    def __init__(self, conv_op: Type[_ConvNd], in_channels: int, out_channels: int, bias: bool = True):
        super().__init__()
        self.out_channels = out_channels
        self.conv = conv_op(in_channels, out_channels, 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        return self.out_channels * _voxels(input_size)


def make_conv(conv_op: Type[_ConvNd], in_channels: int, out_channels: int, bias: bool = True,
              separable: bool = True) -> nn.Module:
    """The RAS conv's 3x3x3 convolution: separable (the paper) or full (the ablation that isolates the split)."""
    return (SeparableConv if separable else FullConv)(conv_op, in_channels, out_channels, bias)


class SpatialAttention(nn.Module):
    """Spatial attention module (SAM): SE attention without the global pooling.

    SC (channels -> channels / reduction) -> ReLU -> SC (-> channels) -> sigmoid gives a voxel-wise map in (0, 1)
    that re-weights the input. Keeping the spatial dimensions keeps the spatial detail SE's pooling throws away.
    ``separable=False`` uses full 3x3x3 convs instead of SCs (ablation).
    """

    def __init__(self, conv_op: Type[_ConvNd], channels: int, reduction: int = 4, bias: bool = True,
                 separable: bool = True):
        super().__init__()
        reduced = max(1, channels // reduction)
        self.channels = channels
        self.squeeze = make_conv(conv_op, channels, reduced, bias, separable)
        self.relu = nn.ReLU(inplace=True)
        self.excite = make_conv(conv_op, reduced, channels, bias, separable)

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.excite(self.relu(self.squeeze(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention_map(x)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        return (self.squeeze.compute_conv_feature_map_size(input_size)
                + self.excite.compute_conv_feature_map_size(input_size))


class RASConv(nn.Module):
    """Residual attention separable convolution.

    Path 1: SC -> norm -> nonlin -> SC -> norm -> nonlin, re-weighted by a SAM.
    Path 2: the input (identity, or a 1x1(x1) projection + norm where the channel count changes). Without the norm,
    the sums of nine stacked RAS convs grew the logits' scale ~25-fold at initialisation and saturated the softmax.
    Output: path 1 + path 2.

    Ablation switches (the paper's block has both on): ``attention=False`` drops the SAM (path 1 is used as is),
    ``separable=False`` uses full 3x3x3 (2D: 3x3) convs in place of every SC, the SAM's included.
    """

    def __init__(self,
                 conv_op: Type[_ConvNd],
                 in_channels: int,
                 out_channels: int,
                 norm_op: Optional[Type[nn.Module]] = None,
                 norm_op_kwargs: Optional[dict] = None,
                 nonlin: Optional[Type[nn.Module]] = None,
                 nonlin_kwargs: Optional[dict] = None,
                 attention_reduction: int = 4,
                 conv_bias: bool = True,
                 attention: bool = True,
                 separable: bool = True):
        super().__init__()
        self.out_channels = out_channels

        def norm_nonlin():
            layers = []
            if norm_op is not None:
                layers.append(norm_op(out_channels, **(norm_op_kwargs or {})))
            if nonlin is not None:
                layers.append(nonlin(**(nonlin_kwargs or {})))
            return layers

        self.path = nn.Sequential(
            make_conv(conv_op, in_channels, out_channels, conv_bias, separable), *norm_nonlin(),
            make_conv(conv_op, out_channels, out_channels, conv_bias, separable), *norm_nonlin(),
        )
        self.attention = SpatialAttention(conv_op, out_channels, attention_reduction, conv_bias, separable) \
            if attention else nn.Identity()
        if in_channels == out_channels:
            self.residual = nn.Identity()
        else:  # normalised like ResNet's projection shortcut, so that stacked residual sums keep their scale
            self.residual = nn.Sequential(conv_op(in_channels, out_channels, 1, bias=False),
                                          *([norm_op(out_channels, **(norm_op_kwargs or {}))] if norm_op else []))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attention(self.path(x)) + self.residual(x)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        size = sum(m.compute_conv_feature_map_size(input_size) for m in self.path
                   if isinstance(m, (SeparableConv, FullConv)))
        if isinstance(self.attention, SpatialAttention):
            size += self.attention.compute_conv_feature_map_size(input_size)
        if not isinstance(self.residual, nn.Identity):
            size += self.out_channels * _voxels(input_size)
        return size


class IntensityWindow(nn.Module):
    """Clips chosen input channels to an intensity window and scales them to [-1, 1].

    Doing the CT window inside the network (the paper's soft-tissue window is [-150, 150] HU) lets the plans use
    ``NoNormalization``, so stock ``nnUNetv2_predict`` feeds raw HU and gets the paper's pre-processing.
    ``windows`` has one entry per input channel: ``(low, high)`` or ``None`` to pass the channel through.
    """

    def __init__(self, windows: Sequence[Optional[Sequence[float]]]):
        super().__init__()
        low = [w[0] if w is not None else 0. for w in windows]
        high = [w[1] if w is not None else 1. for w in windows]
        if any(h <= lo for lo, h in zip(low, high)):
            raise ValueError(f"every intensity window needs low < high, got {list(windows)}")
        self.windows = [list(w) if w is not None else None for w in windows]
        self.register_buffer('low', torch.tensor(low, dtype=torch.float32), persistent=False)
        self.register_buffer('high', torch.tensor(high, dtype=torch.float32), persistent=False)
        self.register_buffer('active', torch.tensor([w is not None for w in windows]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        low, high = self.low.view(shape), self.high.view(shape)
        windowed = (torch.minimum(torch.maximum(x, low), high) - (low + high) / 2) / ((high - low) / 2)
        return torch.where(self.active.view(shape), windowed, x)

    def extra_repr(self) -> str:
        return f"windows={self.windows}"
