"""Building blocks of the RAS U-Net (Zhang et al., "automatic segmentation of liver-cancer target volumes in CT
combining separable convolution and attention"; see ``ras_unet``): separable conv, spatial attention, RAS conv.

Every block is parameterised by ``conv_op`` (``nn.Conv2d`` or ``nn.Conv3d``) like the blocks of
dynamic-network-architectures, and reports ``compute_conv_feature_map_size`` so that nnU-Net's planner can fit
patch and batch size to a memory budget.

Axis convention: nnU-Net transposes data so that axis 0 of a 3D patch is the axis with the coarsest spacing,
i.e. the slice axis of an anisotropic CT. In PyTorch's (D, H, W) order the in-plane kernel is therefore
(1, 3, 3) and the through-plane kernel (3, 1, 1).
"""
import functools
from typing import Callable, List, Optional, Sequence, Type

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.helper import convert_conv_op_to_dim
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm
from torch.utils.checkpoint import checkpoint


def _voxels(input_size: Sequence[int]) -> int:
    return int(np.prod(input_size, dtype=np.int64))


def channels_last_on_cpu(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the channels-last layout if it is a 3D feature map on the CPU, where oneDNN runs the thin (1,3,3) and
    (3,1,1) convs about twice as fast in that layout (the full 3x3x3 ones ~1.5x); a no-op when it already is.

    Applied after every conv because oneDNN returns some convs (batch 1, small maps) contiguous even from a
    channels-last input; the norms (``InstanceNorm``), activations and sums keep the layout they are given. A map
    with one channel is copied to channels-last strides explicitly: it counts as contiguous in both layouts, and
    oneDNN would then choose the slow one. On a GPU nothing changes.
    """
    if x.device.type != 'cpu' or x.ndim != 5:
        return x
    if x.size(1) == 1 and x.stride(1) != 1:
        return x.clone(memory_format=torch.channels_last_3d)
    return x.contiguous(memory_format=torch.channels_last_3d)


def cat_channels(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(tensors, 1)``; for channels-last 3D maps on the CPU, copied into a new channels-last map instead.

    ``torch.cat`` of channels-last maps interleaves the inputs voxel by voxel: for two 1 x 32 x 48 x 192 x 192 maps it
    took 316 ms in bfloat16 (212 ms in float32) on 2 cores, against 13 ms (35 ms) for two slice copies. The copies
    are differentiable (each input's gradient is its slice of the output's), like ``torch.cat``'s.
    """
    first = tensors[0]
    if first.device.type != 'cpu' or first.ndim != 5 or not all(
            t.is_contiguous(memory_format=torch.channels_last_3d) for t in tensors):
        return torch.cat(tuple(tensors), 1)
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
    out = torch.empty((first.shape[0], sum(t.shape[1] for t in tensors), *first.shape[2:]), dtype=dtype,
                      memory_format=torch.channels_last_3d)
    start = 0
    for t in tensors:
        out[:, start:start + t.shape[1]].copy_(t)
        start += t.shape[1]
    return out


def recompute_in_backward(function: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
    """``function(*inputs)``, keeping only the inputs for the backward pass, which computes it again (activation
    checkpointing: Chen et al., "Training deep nets with sublinear memory cost", 2016).

    For the cheap parts of a RAS conv whose intermediate maps are large: the attention branch and the separable
    conv's in-plane output. The result and the gradients are the same; only what is stored changes. Outside
    training (no autograd) it is a plain call. ``function`` must not draw random numbers or update running
    statistics, since it runs twice.
    """
    if torch.is_grad_enabled():
        return checkpoint(function, *inputs, use_reentrant=False)
    return function(*inputs)


_MIN_INVERTIBLE_WEIGHT = 1e-3


def _invertible(weight: Optional[torch.Tensor], x: torch.Tensor, negative_slope: Optional[float]) -> bool:
    """Whether a leaky-ReLU'd instance norm's input can be recovered from its output to float precision: a positive
    slope (the activation is one-to-one), a float32/64 map, and no affine weight near 0 (the division by it would
    magnify the output's rounding)."""
    return negative_slope is not None and negative_slope > 0 and x.dtype in (torch.float32, torch.float64) and (
        weight is None or bool(weight.detach().abs().min() >= _MIN_INVERTIBLE_WEIGHT))


class _ChannelsLastInstanceNorm(torch.autograd.Function):
    """Instance norm of a channels-last map on the CPU, computed as batch norm of each sample alone (a sample's
    instance statistics are the batch statistics of a batch of one), forward and backward, each written straight
    into its slice of the channels-last result. PyTorch's batch-norm kernels handle that layout; for a 8 x 32 x 40 x
    56 x 40 map on 2 cores the forward took 8 ms against 31 ms for group norm with one channel per group, the backward
    36 ms against 100 ms.

    With ``negative_slope`` the leaky ReLU that follows the norm is applied in place, and only the activated output is
    kept for the backward pass, which recovers the norm's output and normalised input from it (the activation and the
    affine map are one-to-one): the in-place activated batch norm of Rota Bulo, Porzi and Kontschieder, "In-Place
    Activated BatchNorm for Memory-Optimized Training of DNNs", CVPR 2018. The output is kept anyway (it is the next
    conv's input), so the norm's input, a map of the same size, is no longer stored. The values computed are the
    same; where the output cannot be inverted (``_invertible``) the input is kept as before."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float,
                negative_slope: Optional[float]):
        n, c = x.shape[:2]
        out = torch.empty_like(x, memory_format=torch.channels_last_3d)
        statistics = torch.promote_types(x.dtype, torch.float32)  # batch norm's: float32 for a half-precision map
        mean, rstd = x.new_empty((n, c), dtype=statistics), x.new_empty((n, c), dtype=statistics)
        for i in range(n):
            torch.ops.aten.native_batch_norm.out(x[i:i + 1], weight, bias, None, None, True, 0.0, eps,
                                                 out=out[i:i + 1], save_mean=mean[i], save_invstd=rstd[i])
        ctx.eps, ctx.negative_slope = eps, negative_slope
        ctx.from_output = _invertible(weight, x, negative_slope)
        if negative_slope is not None:
            nn.functional.leaky_relu_(out, negative_slope)
        # the input only where the output cannot give it back; the output only where the activation needs it
        ctx.save_for_backward(None if ctx.from_output else x, out if negative_slope is not None else None,
                              weight, bias, mean, rstd)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, out, weight, bias, mean, rstd = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last_3d)
        affine = weight is not None
        mask = [ctx.needs_input_grad[0], affine and ctx.needs_input_grad[1], affine and ctx.needs_input_grad[2]]
        grad_x = torch.empty_like(grad, memory_format=torch.channels_last_3d)
        grad_w = torch.zeros_like(weight) if mask[1] else None
        grad_b = torch.zeros_like(weight) if mask[2] else None
        # the out= form wants every output defined: all three gradients are computed (the parameters' are cheap
        # reductions), with a unit weight in place of a missing one (instance norm without affine parameters)
        unit = weight if affine else grad.new_ones(grad.shape[1])
        channel = (1, -1) + (1,) * (grad.ndim - 2)
        for i in range(grad.shape[0]):  # the input's gradient straight into its slice; the parameters' summed
            g = grad[i:i + 1]
            if out is not None:  # through the leaky ReLU, from its output (positive exactly where its input is)
                g = torch.ops.aten.leaky_relu_backward(g, out[i:i + 1], ctx.negative_slope, True)
            if ctx.from_output:
                # batch norm's backward from the norm's output y (the leaky ReLU with the inverse slope undoes the
                # activation): given y as its input, the bias as the mean and 1 / weight as the scale, it normalises
                # y back to x_hat = (y - bias) / weight and returns the gradient in units of x_hat; times weight * rstd
                # it is the input's
                sample = nn.functional.leaky_relu(out[i:i + 1], 1 / ctx.negative_slope)
                centre, scale = (bias, weight.reciprocal()) if affine else (torch.zeros_like(rstd[i]), unit)
            else:
                sample, centre, scale = x[i:i + 1], mean[i], rstd[i]
            _, gw, gb = torch.ops.aten.native_batch_norm_backward.out(
                g, sample, unit, None, None, centre, scale, True, ctx.eps, [True] * 3,
                out0=grad_x[i:i + 1], out1=torch.empty_like(unit), out2=torch.empty_like(unit))
            if ctx.from_output:
                grad_x[i:i + 1].mul_((rstd[i] * weight if affine else rstd[i]).view(channel).to(grad_x.dtype))
            if mask[1]:
                grad_w += gw
            if mask[2]:
                grad_b += gb
        return grad_x if mask[0] else None, grad_w, grad_b, None, None


class InstanceNorm(nn.GroupNorm):
    """Instance normalisation (Ulyanov et al., 2016) that keeps a channels-last map channels-last on the CPU.

    The arithmetic and the parameters (``weight``, ``bias``) are those of ``nn.InstanceNorm3d``, so checkpoints load
    either way. ``nn.InstanceNorm3d`` copies a channels-last map to contiguous and back, which took a third of a RAS
    U-Net training step on the CPU; this one computes in the layout it is given there (``_ChannelsLastInstanceNorm``)
    and calls instance norm elsewhere, as nnU-Net's networks do.

    ``negative_slope``: the leaky ReLU that follows the norm in nnU-Net's conv blocks, applied by the norm itself, in
    place, so that a training step on the CPU keeps only its output (see ``_ChannelsLastInstanceNorm``). Its module in
    the network is then ``nn.Identity`` (``norm_nonlin``).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: Optional[float] = 0.1, affine: bool = False,
                 track_running_stats: bool = False, device=None, dtype=None, negative_slope: Optional[float] = None):
        if track_running_stats:
            raise ValueError('InstanceNorm keeps no running statistics; use nn.InstanceNorm3d for that')
        super().__init__(num_features, num_features, eps, affine, device, dtype)
        self.negative_slope = negative_slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == 'cpu' and x.ndim == 5 and torch.is_grad_enabled() \
                and x.is_contiguous(memory_format=torch.channels_last_3d):
            return _ChannelsLastInstanceNorm.apply(x, self.weight, self.bias, self.eps, self.negative_slope)
        out = nn.functional.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps) \
            if x.device.type != 'cpu' else super().forward(x)
        return out if self.negative_slope is None else nn.functional.leaky_relu_(out, self.negative_slope)

    def extra_repr(self) -> str:
        return super().extra_repr() + ('' if self.negative_slope is None else
                                       f', leaky ReLU applied (negative_slope={self.negative_slope})')


def layout_friendly_norm(norm_op: Optional[Type[nn.Module]], norm_op_kwargs: Optional[dict]):
    """The plan's norm, with instance norm (nnU-Net's choice) replaced by the channels-last-friendly ``InstanceNorm``
    of the same arithmetic; a norm with running statistics is kept as it is."""
    if norm_op is not None and issubclass(norm_op, _InstanceNorm) \
            and not (norm_op_kwargs or {}).get('track_running_stats', False):
        return InstanceNorm
    return norm_op


def norm_nonlin(channels: int, norm_op: Optional[Type[nn.Module]], norm_op_kwargs: Optional[dict],
                nonlin: Optional[Type[nn.Module]], nonlin_kwargs: Optional[dict]) -> List[nn.Module]:
    """The plan's norm and nonlin after a conv, as two modules (the keys of nnU-Net's conv blocks). Instance norm
    followed by a leaky ReLU (nnU-Net's default) becomes ``InstanceNorm`` applying the activation itself, which then
    keeps half the memory for the backward pass, and an ``nn.Identity`` in the nonlin's place."""
    norm_op = layout_friendly_norm(norm_op, norm_op_kwargs)
    norm_op_kwargs, nonlin_kwargs = dict(norm_op_kwargs or {}), dict(nonlin_kwargs or {})
    slope = nonlin_kwargs.get('negative_slope', 1e-2)  # nn.LeakyReLU's default
    if norm_op is InstanceNorm and nonlin is nn.LeakyReLU and slope > 0:
        return [InstanceNorm(channels, **norm_op_kwargs, negative_slope=slope), nn.Identity()]
    layers = []
    if norm_op is not None:
        layers.append(norm_op(channels, **norm_op_kwargs))
    if nonlin is not None:
        layers.append(nonlin(**nonlin_kwargs))
    return layers


class Recomputed(nn.Sequential):
    """An ``nn.Sequential`` whose intermediate maps are recomputed in the backward pass (``recompute_in_backward``)
    instead of stored. Its state-dict keys are those of the plain ``nn.Sequential``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return recompute_in_backward(super().forward, x)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (Srivastava et al., 2014: each element zeroed with probability p, the rest scaled by 1 / (1 - p))
    that keeps a one-byte mask for the backward pass: on the CPU ``nn.Dropout`` keeps the scaled mask as floats, four
    times the memory, and draws it with ``bernoulli_``, which is 2.5x slower there than comparing uniform numbers to
    p. On a GPU it is ``nn.Dropout``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.device.type != 'cpu' or not 0 < self.p < 1:
            return super().forward(x)
        keep = torch.rand_like(x) >= self.p
        return torch.where(keep, x * (1 / (1 - self.p)), 0.)


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

    def _convs(self, x: torch.Tensor) -> torch.Tensor:
        return channels_last_on_cpu(self.through_plane(channels_last_on_cpu(self.in_plane(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the in-plane output is only kept for the through-plane conv's backward: recomputing it costs one thin conv
        return recompute_in_backward(self._convs, x)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        return self.out_channels * _voxels(input_size)


class FullConv(nn.Module):
    """The unsplit 3x3x3 (2D: 3x3) convolution that ``SeparableConv`` replaces: the separable-conv ablation."""

    def __init__(self, conv_op: Type[_ConvNd], in_channels: int, out_channels: int, bias: bool = True):
        super().__init__()
        self.out_channels = out_channels
        self.conv = conv_op(in_channels, out_channels, 3, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channels_last_on_cpu(self.conv(x))

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

    def _excitation(self, x: torch.Tensor) -> torch.Tensor:
        return self.excite(self.relu(self.squeeze(x)))

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self._excitation(x))

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention_map(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():  # inference: the map is re-weighted in place (no new full-size tensor)
            return torch.sigmoid_(self._excitation(x)).mul_(x)
        # the map costs ~1/7 of the block's multiply-adds but would keep 1.75x the input's size for the backward pass
        return recompute_in_backward(self._attend, x)

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> int:
        return self.channels * _voxels(input_size)  # the re-weighted output; the map is recomputed


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
        after_conv = (out_channels, norm_op, norm_op_kwargs, nonlin, nonlin_kwargs)
        self.path = nn.Sequential(
            make_conv(conv_op, in_channels, out_channels, conv_bias, separable), *norm_nonlin(*after_conv),
            make_conv(conv_op, out_channels, out_channels, conv_bias, separable), *norm_nonlin(*after_conv),
        )
        norm_op = layout_friendly_norm(norm_op, norm_op_kwargs)
        self.attention = SpatialAttention(conv_op, out_channels, attention_reduction, conv_bias, separable) \
            if attention else nn.Identity()
        if in_channels == out_channels:
            self.residual = nn.Identity()
        else:  # normalised like ResNet's projection shortcut, so that stacked residual sums keep their scale;
            # recomputed in the backward pass unless its norm keeps running statistics (they would be updated twice)
            norm = [norm_op(out_channels, **(norm_op_kwargs or {}))] if norm_op else []
            recompute = not any(getattr(m, 'track_running_stats', False) for m in norm)
            self.residual = (Recomputed if recompute else nn.Sequential)(
                conv_op(in_channels, out_channels, 1, bias=False), *norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = channels_last_on_cpu(x)  # the network's input, or a decoder concatenation (up-sampled map + skip)
        out = self.attention(self.path(x))  # a new tensor: the last op of path 1 is a conv, norm or the SAM's product
        residual = channels_last_on_cpu(self.residual(x))
        return out + residual if torch.is_grad_enabled() else out.add_(residual)  # in place at inference

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
