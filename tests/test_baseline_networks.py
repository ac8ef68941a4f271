"""Baseline networks, RAS ablation switches and seed 003's losses, on real forward passes."""
import pytest
import torch
from torch import nn

from nnunet_ras.networks.baselines import (SqueezeExcitation, build_residual_se_unet, build_se_unet, build_vnet)
from nnunet_ras.networks.hybrid import build_hybrid_unet_25d
from nnunet_ras.networks.ras_unet import build_ras_unet
from nnunet_ras.training.losses import LRDEHLoss, SquaredDenominatorDiceLoss, hard_negative_mask

# nnU-Net default plans' arch_kwargs (PlainConvUNet), as stored in nnUNetPlans.json, small widths
PLAN_3D = {'n_stages': 3, 'features_per_stage': [8, 16, 32], 'conv_op': 'torch.nn.modules.conv.Conv3d',
           'kernel_sizes': [[1, 3, 3], [3, 3, 3], [3, 3, 3]], 'strides': [[1, 1, 1], [1, 2, 2], [2, 2, 2]],
           'n_conv_per_stage': [2, 2, 2], 'n_conv_per_stage_decoder': [2, 2], 'conv_bias': True,
           'norm_op': 'torch.nn.modules.instancenorm.InstanceNorm3d', 'norm_op_kwargs': {'eps': 1e-5, 'affine': True},
           'dropout_op': None, 'dropout_op_kwargs': None, 'nonlin': 'torch.nn.LeakyReLU',
           'nonlin_kwargs': {'inplace': True}}
PLAN_2D = {**PLAN_3D, 'conv_op': 'torch.nn.modules.conv.Conv2d', 'kernel_sizes': [[3, 3]] * 3,
           'strides': [[1, 1], [2, 2], [2, 2]], 'norm_op': 'torch.nn.modules.instancenorm.InstanceNorm2d'}
# odd multiples of the total stride (4 in-plane, 2 through-plane): what nnU-Net's patch sizes look like
SIZE_3D, SIZE_2D = (6, 20, 28), (20, 36)
BUILDERS = {'se_unet': build_se_unet, 'residual_se_unet': build_residual_se_unet, 'vnet': build_vnet,
            'ras_unet': build_ras_unet}


def _params(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


@pytest.mark.parametrize('plan, size', [(PLAN_3D, SIZE_3D), (PLAN_2D, SIZE_2D)], ids=['3d', '2d'])
@pytest.mark.parametrize('name', BUILDERS)
def test_outputs_match_the_plan_with_and_without_deep_supervision(name, plan, size):
    torch.manual_seed(0)
    network = BUILDERS[name](plan, 2, 3, deep_supervision=True).eval()
    x = torch.randn(2, 2, *size)
    with torch.no_grad():
        outputs = network(x)
        expected = [tuple(size)]
        for stride in plan['strides'][1:-1]:
            expected.append(tuple(s // t for s, t in zip(expected[-1], stride)))
        assert [tuple(o.shape) for o in outputs] == [(2, 3, *e) for e in expected]  # highest resolution first
        network.decoder.deep_supervision = False  # nnU-Net's switch
        assert network(x).shape == (2, 3, *size)
    assert network.compute_conv_feature_map_size(size) > 0


def test_se_gate_is_one_value_per_channel_over_all_three_axes():
    se = SqueezeExcitation(16, nn.Conv3d)
    x = torch.rand(1, 16, 4, 5, 6) + 0.1
    gate = se(x) / x
    assert torch.allclose(gate, gate[:, :, :1, :1, :1].expand_as(gate), atol=1e-6)


def test_se_networks_put_se_in_every_stage():
    se_unet = build_se_unet(PLAN_3D, 1, 2)
    residual = build_residual_se_unet(PLAN_3D, 1, 2)
    assert sum(isinstance(m, SqueezeExcitation) for m in se_unet.modules()) == 3 + 2
    assert sum(isinstance(m, SqueezeExcitation) for m in residual.modules()) == 3 + 2
    assert any('.squeeze_excitation.' in k for k in residual.state_dict())


def test_vnet_uses_5x5x5_kernels_prelu_and_strided_convs():
    network = build_vnet(PLAN_3D, 1, 2)
    kernels = {tuple(m.kernel_size) for m in network.modules() if isinstance(m, nn.Conv3d)}
    assert (5, 5, 5) in kernels and (1, 5, 5) in kernels and (3, 3, 3) not in kernels
    assert any(isinstance(m, nn.PReLU) for m in network.modules())
    assert not any(isinstance(m, (nn.MaxPool3d, nn.AvgPool3d)) for m in network.modules())
    assert any(isinstance(m, nn.ConvTranspose3d) for m in network.modules())


def test_ras_ablations_change_the_block_and_its_size():
    ras = build_ras_unet(PLAN_3D, 1, 2)
    no_attention = build_ras_unet(PLAN_3D, 1, 2, attention=False)
    no_separable = build_ras_unet(PLAN_3D, 1, 2, separable=False)
    no_dropout = build_ras_unet(PLAN_3D, 1, 2, encoder_dropout=0.)
    assert _params(no_attention) < _params(ras) < _params(no_separable)
    assert not any('.attention.' in k for k in no_attention.state_dict())
    assert any('.attention.' in k for k in no_separable.state_dict())
    assert {tuple(m.kernel_size) for m in no_separable.modules() if isinstance(m, nn.Conv3d)} == {(3, 3, 3), (1, 1, 1)}
    assert not any(isinstance(m, nn.Dropout) for m in no_dropout.modules())
    assert _params(no_dropout) == _params(ras)
    x = torch.randn(1, 1, *SIZE_3D)
    for network in (no_attention, no_separable):
        assert network.eval()(x).shape == (1, 2, *SIZE_3D)
        assert network.compute_conv_feature_map_size(SIZE_3D) > 0


HIPPOCAMPUS_PLAN = {**PLAN_3D, 'n_stages': 4, 'features_per_stage': [32, 64, 128, 256],
                    'kernel_sizes': [[3, 3, 3]] * 4, 'strides': [[1, 1, 1]] + [[2, 2, 2]] * 3}


def test_hybrid_has_seed_003s_size_and_maps_3d_to_3d():
    network = build_hybrid_unet_25d(HIPPOCAMPUS_PLAN, 1, 3).eval()
    assert 0.9e6 < _params(network) < 1.3e6  # seed 003: about 1 M at 16 base channels
    x = torch.randn(2, 1, 5, 24, 40)  # an odd number of slices
    assert network(x).shape == (2, 3, 5, 24, 40)
    assert network.compute_conv_feature_map_size((5, 24, 40)) > 0


def test_hybrid_slice_sees_only_its_neighbours():
    torch.manual_seed(0)
    network = build_hybrid_unet_25d(PLAN_3D, 2, 2).eval()
    x = torch.randn(1, 2, 7, 16, 16)
    perturbed = x.clone()
    perturbed[:, :, 5] += 10  # slice z + 2 for z = 3
    with torch.no_grad():
        before, after = network(x), network(perturbed)
    assert torch.equal(before[:, :, 3], after[:, :, 3])
    assert not torch.allclose(before[:, :, 4], after[:, :, 4])  # z = 4 does see slice 5
    edge = x.clone()
    edge[:, :, 0] += 10
    with torch.no_grad():
        assert not torch.allclose(network(edge)[:, :, 0], before[:, :, 0])  # the replicated edge slice


def test_hybrid_refuses_a_2d_plan():
    with pytest.raises(ValueError, match='3D configuration'):
        build_hybrid_unet_25d(PLAN_2D, 1, 2)


def test_squared_dice_matches_hand_computed_value():
    probabilities = torch.tensor([[0.2, 0.9, 0.6, 0.1]])  # foreground probability of 4 voxels
    labels = torch.tensor([0, 1, 1, 0])
    x = torch.stack([1 - probabilities, probabilities], 1)  # (1, 2, 4), already probabilities
    # 1 - (2 * (0.9 + 0.6) + 1) / ((0.04 + 0.81 + 0.36 + 0.01) + 2 + 1) = 1 - 4 / 4.22
    loss = SquaredDenominatorDiceLoss(batch_dice=True)(x, labels.view(1, 1, 4))
    assert loss.item() == pytest.approx(1 - 4 / 4.22, abs=1e-6)
    perfect = SquaredDenominatorDiceLoss()(torch.stack([1 - labels, labels], 0)[None].float(), labels.view(1, 1, 4))
    assert perfect.item() == pytest.approx(0, abs=1e-6)


def test_lrdehl_keeps_as_many_hard_negatives_as_positives():
    torch.manual_seed(0)
    scores = torch.rand(2, 8, 8, 8)
    positives = torch.rand(2, 8, 8, 8) > 0.9
    mask = hard_negative_mask(scores, positives)
    assert int(mask.sum()) == int(positives.sum())
    assert not (mask & positives).any()
    assert scores[mask].min() >= scores[~positives & ~mask].max()  # the highest-scoring negatives


def test_lrdehl_matches_hand_computed_values():
    p = torch.tensor([0.2, 0.9, 0.6, 0.1, 0.7, 0.3])  # foreground probability of 6 voxels
    labels = torch.tensor([0, 1, 1, 0, 0, 0])
    x = torch.stack([1 - p, p], 0)[None]  # (1, 2, 6), already probabilities
    # positives 0.9, 0.6 -> errors 0.1, 0.4; the 2 hardest negatives 0.7, 0.3 -> 0.7, 0.3; / 2 positives
    assert LRDEHLoss()(x, labels.view(1, 1, 6)).item() == pytest.approx((0.1 + 0.4 + 0.7 + 0.3) / 2, abs=1e-6)
    assert LRDEHLoss(power=2)(x, labels.view(1, 1, 6)).item() == pytest.approx(
        (0.01 + 0.16 + 0.49 + 0.09) / 2, abs=1e-6)
    # no positive: the single most confident false positive, divided by 1
    assert LRDEHLoss()(x, torch.zeros(1, 1, 6)).item() == pytest.approx(0.9, abs=1e-6)


def test_lrdehl_gradient_reaches_only_kept_voxels():
    logits = torch.randn(1, 2, 10, requires_grad=True)
    labels = torch.zeros(1, 1, 10)
    labels[0, 0, :3] = 1
    LRDEHLoss(apply_nonlin=lambda t: torch.softmax(t, 1))(logits, labels).backward()
    assert int((logits.grad[0, 1] != 0).sum()) == 6  # 3 positives + 3 hard negatives
