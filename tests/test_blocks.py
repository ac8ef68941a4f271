"""Unit tests of the RAS U-Net building blocks and the network, on real tensors."""
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from torch import nn

from nnunet_ras.networks import IntensityWindow, RASConv, RASUNet, SeparableConv, SpatialAttention, build_ras_unet
from nnunet_ras.networks.blocks import Dropout, InstanceNorm, cat_channels
from nnunet_ras.networks.ras_unet import ras_kwargs_from_plan

torch.manual_seed(0)


def _kwargs(dim: int, n_stages: int = 4, features=(8, 16, 32, 32)):
    conv = nn.Conv3d if dim == 3 else nn.Conv2d
    norm = nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d
    first = [1] * dim
    strides = [first] + [[1, 2, 2] if dim == 3 and s == 1 else [2] * dim for s in range(1, n_stages)]
    return dict(n_stages=n_stages, features_per_stage=list(features[:n_stages]), conv_op=conv, strides=strides,
                conv_bias=True, norm_op=norm, norm_op_kwargs={'eps': 1e-5, 'affine': True}, nonlin=nn.LeakyReLU,
                nonlin_kwargs={'inplace': True})


@pytest.mark.parametrize('dim', [2, 3])
def test_separable_conv_kernels_and_weight_count(dim):
    conv = nn.Conv3d if dim == 3 else nn.Conv2d
    sc = SeparableConv(conv, 16, 16, bias=False)
    in_plane, through = sc.in_plane.weight.shape[2:], sc.through_plane.weight.shape[2:]
    assert tuple(in_plane) == ((1, 3, 3) if dim == 3 else (3, 3))
    assert tuple(through) == ((3, 1, 1) if dim == 3 else (1, 1))
    n_weights = sum(p.numel() for p in sc.parameters())
    assert n_weights == (12 if dim == 3 else 10) * 16 * 16  # 3D: 9 + 3 per channel pair instead of 27
    x = torch.randn(2, 16, *([5, 9, 11] if dim == 3 else [9, 11]))
    assert sc(x).shape == x.shape


def test_separable_conv_is_in_plane_then_through_plane():
    """An impulse spreads in-plane by the first conv and only along the slice axis by the second."""
    sc = SeparableConv(nn.Conv3d, 1, 1, bias=False)
    with torch.no_grad():
        sc.in_plane.weight.fill_(1.)
        sc.through_plane.weight.fill_(1.)
    x = torch.zeros(1, 1, 7, 7, 7)
    x[0, 0, 3, 3, 3] = 1
    support = sc(x)[0, 0] != 0
    assert support.sum() == 27 and support[2:5, 2:5, 2:5].all()
    only_in_plane = sc.in_plane(x)[0, 0] != 0
    assert only_in_plane.sum() == 9 and only_in_plane[3, 2:5, 2:5].all()


@pytest.mark.parametrize('dim', [2, 3])
def test_attention_map_is_voxelwise_in_open_unit_interval(dim):
    conv = nn.Conv3d if dim == 3 else nn.Conv2d
    sam = SpatialAttention(conv, 8, reduction=2)
    x = torch.randn(2, 8, *([4, 10, 12] if dim == 3 else [10, 12])) * 5
    attention = sam.attention_map(x)
    assert attention.shape == x.shape
    assert (attention > 0).all() and (attention < 1).all()
    assert attention.std() > 0  # voxel-wise, not a global gate
    torch.testing.assert_close(sam(x), x * attention)


def test_ras_conv_residual_identity_and_projection():
    identity = RASConv(nn.Conv3d, 8, 8, nn.InstanceNorm3d, {'affine': True}, nn.LeakyReLU, {'inplace': True})
    projected = RASConv(nn.Conv3d, 4, 8, nn.InstanceNorm3d, {'affine': True}, nn.LeakyReLU, {'inplace': True})
    assert isinstance(identity.residual, nn.Identity)
    assert tuple(projected.residual[0].weight.shape) == (8, 4, 1, 1, 1)
    assert isinstance(projected.residual[1], InstanceNorm)  # nn.InstanceNorm3d's arithmetic, see below
    for block, channels in ((identity, 8), (projected, 4)):
        x = torch.randn(2, channels, 4, 8, 8)
        full = block(x)
        assert full.shape == (2, 8, 4, 8, 8)
        with torch.no_grad():  # silence path 1: only the residual path is left
            for m in block.path.modules():
                if isinstance(m, nn.Conv3d):
                    m.weight.zero_()
                    if m.bias is not None:
                        m.bias.zero_()
        torch.testing.assert_close(block(x), block.residual(x))
        assert not torch.allclose(full, block.residual(x))  # and path 1 did contribute before


def test_intensity_window_clips_and_scales_only_windowed_channels():
    window = IntensityWindow([[-150, 150], None])
    x = torch.tensor([[-1000., -150., 0., 75., 150., 3000.], [-1000., -150., 0., 75., 150., 3000.]])
    y = window(x.view(1, 2, 6))[0]
    torch.testing.assert_close(y[0], torch.tensor([-1., -1., 0., 0.5, 1., 1.]))
    torch.testing.assert_close(y[1], x[1])
    with pytest.raises(ValueError):
        IntensityWindow([[10, -10]])


@pytest.mark.parametrize('dim', [2, 3])
def test_gradient_reaches_every_parameter(dim):
    net = build_ras_unet(_kwargs(dim), input_channels=2, num_classes=3, deep_supervision=True)
    x = torch.randn(2, 2, *([8, 32, 32] if dim == 3 else [32, 32]))
    outputs = net(x)
    sum(o.square().mean() for o in outputs).backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


@pytest.mark.parametrize('dim,size', [(3, (7, 21, 37)), (3, (16, 32, 32)), (2, (21, 37)), (2, (33, 17))])
def test_deep_supervision_outputs_and_shapes(dim, size):
    kwargs = _kwargs(dim)
    net = build_ras_unet(kwargs, input_channels=1, num_classes=3, deep_supervision=True)
    net.eval()
    x = torch.randn(1, 1, *size)
    outputs = net(x)
    assert isinstance(outputs, list) and len(outputs) == kwargs['n_stages'] - 1
    expected, current = [], list(size)
    for stride in kwargs['strides'][:-1]:
        current = [c // s for c, s in zip(current, stride)]
        expected.append(tuple(current))
    assert [tuple(o.shape[2:]) for o in outputs] == expected  # highest resolution first
    assert all(o.shape[:2] == (1, 3) for o in outputs)
    net.decoder.deep_supervision = False  # nnU-Net's switch
    single = net(x)
    assert isinstance(single, torch.Tensor) and tuple(single.shape[2:]) == tuple(size)
    torch.testing.assert_close(single, outputs[0])
    assert not torch.allclose(single.softmax(1).sum(1), single.sum(1))  # logits, not probabilities


def test_dropout_only_in_training_and_only_in_the_encoder():
    net = build_ras_unet(_kwargs(3), 1, 2, encoder_dropout=0.5)
    drops = [m for m in net.encoder.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 4 and all(d.p == 0.5 for d in drops)
    assert not any(isinstance(m, nn.Dropout) for m in net.decoder.modules())
    x = torch.randn(1, 1, 8, 16, 16)
    net.eval()
    torch.testing.assert_close(net(x), net(x))
    net.train()
    assert not torch.allclose(net(x), net(x))


@pytest.mark.parametrize('affine', [True, False])
@pytest.mark.parametrize('layout', ['channels_last', 'contiguous'])
def test_instance_norm_matches_pytorchs_forward_and_backward(affine, layout):
    """The layout-keeping instance norm computes nn.InstanceNorm3d's values and gradients, and reads its weights."""
    x = torch.randn(3, 5, 4, 6, 7, dtype=torch.float64)
    if layout == 'channels_last':
        x = x.contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_()
    reference, ours = nn.InstanceNorm3d(5, affine=affine).double(), InstanceNorm(5, affine=affine).double()
    if affine:
        with torch.no_grad():
            reference.weight.uniform_(0.5, 2.)
            reference.bias.normal_()
    ours.load_state_dict(reference.state_dict())  # same keys: checkpoints load either way
    grad = torch.randn(3, 5, 4, 6, 7, dtype=torch.float64)
    expected = reference(x), torch.autograd.grad(reference(x), [x, *reference.parameters()], grad)
    y = ours(x)
    torch.testing.assert_close(y, expected[0])
    torch.testing.assert_close(torch.autograd.grad(y, [x, *ours.parameters()], grad), expected[1])
    assert y.is_contiguous(memory_format=torch.channels_last_3d) == (layout == 'channels_last')
    with pytest.raises(ValueError, match='running statistics'):
        InstanceNorm(5, track_running_stats=True)


def test_dropout_zeroes_p_and_scales_the_rest_with_a_one_byte_mask():
    drop = Dropout(0.5)
    x = torch.rand(4, 8, 16, 32, 32) + 1.
    x.requires_grad_()
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.5) < 0.01
    torch.testing.assert_close(y[kept], 2 * x.detach()[kept])
    y.sum().backward()
    torch.testing.assert_close(x.grad, 2. * kept)  # the gradient flows through the kept elements only
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        drop(x)
    assert [t.dtype for t in saved] == [torch.bool]  # nn.Dropout keeps a float mask on the CPU
    drop.eval()
    assert drop(x) is x


@pytest.mark.parametrize('dim', [2, 3])
def test_gradients_of_the_memory_saving_forms_are_exact(dim):
    """RAS U-Net trains with its attention maps, separable-conv intermediates, pooling and projection shortcuts
    recomputed in the backward pass, in the channels-last layout, with the layout-keeping instance norm: the
    gradients must be those of the function, checked against finite differences."""
    net = build_ras_unet(_kwargs(dim, n_stages=2, features=(2, 4)), 1, 2).double().eval()  # eval: no dropout
    x = torch.randn(2, 1, *([2, 4, 4] if dim == 3 else [4, 4]), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(net, (x,), eps=1e-6, atol=1e-5)
    with torch.no_grad():  # outside training the plain forms run: same values
        plain = net(x)
    torch.testing.assert_close(net(x), plain)


def test_training_keeps_less_than_the_plain_computation():
    """What a training step keeps for the backward pass, with and without the recomputed parts."""
    import nnunet_ras.networks.blocks as blocks
    net = build_ras_unet(_kwargs(3), 1, 2)
    x = torch.randn(2, 1, 8, 32, 32)

    def kept_bytes():
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net(x)
        return sum(storages.values())
    lean = kept_bytes()
    original = blocks.recompute_in_backward
    blocks.recompute_in_backward = lambda function, *inputs: function(*inputs)
    try:
        plain = kept_bytes()
    finally:
        blocks.recompute_in_backward = original
    assert lean < 0.75 * plain


def test_paper_layout_has_nine_ras_convs():
    net = build_ras_unet(_kwargs(3, n_stages=5, features=(8, 16, 32, 64, 64)), 1, 2)
    assert sum(isinstance(m, RASConv) for m in net.modules()) == 9


def test_feature_map_estimate_scales_with_patch_size():
    net = build_ras_unet(_kwargs(3), 1, 2, deep_supervision=True)
    small, large = net.compute_conv_feature_map_size((8, 32, 32)), net.compute_conv_feature_map_size((16, 64, 64))
    assert small > 0 and 7 < large / small <= 8.01


def test_ras_kwargs_from_default_plans_and_parameter_budget():
    """Built from a PlainConvUNet plan, RAS U-Net has at most half the default network's parameters."""
    plan = {**_kwargs(3, 5, (32, 64, 128, 256, 320)), 'kernel_sizes': [[1, 3, 3]] + [[3, 3, 3]] * 4,
            'n_conv_per_stage': [2] * 5, 'n_conv_per_stage_decoder': [2] * 4, 'dropout_op': None,
            'dropout_op_kwargs': None}
    default = PlainConvUNet(input_channels=1, num_classes=3, deep_supervision=True, **plan)
    ras = build_ras_unet(plan, 1, 3, deep_supervision=True)
    assert set(ras_kwargs_from_plan(plan)) == {'n_stages', 'features_per_stage', 'conv_op', 'strides', 'conv_bias',
                                               'norm_op', 'norm_op_kwargs', 'nonlin', 'nonlin_kwargs'}
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(ras) <= 0.5 * n(default)
    with pytest.raises(KeyError, match='strides'):
        ras_kwargs_from_plan({'n_stages': 2})


def test_string_class_names_from_json_plans_are_located():
    kwargs = _kwargs(3)
    kwargs.update(conv_op='torch.nn.modules.conv.Conv3d', norm_op='torch.nn.modules.instancenorm.InstanceNorm3d',
                  nonlin='torch.nn.LeakyReLU', intensity_window=[[-150., 150.]])
    net = build_ras_unet(kwargs, 1, 2)
    assert isinstance(net, RASUNet) and isinstance(net.window, IntensityWindow)
    kwargs['nonlin'] = 'torch.nn.NoSuchNonlin'
    with pytest.raises(ImportError, match='NoSuchNonlin'):
        build_ras_unet(kwargs, 1, 2)


def test_activations_keep_their_scale_through_nine_ras_convs():
    """Stacked residual sums must not saturate the softmax at initialisation (it stalls a Dice-only loss)."""
    net = build_ras_unet(_kwargs(3, n_stages=5, features=(8, 16, 32, 64, 64)), 1, 3)
    net.eval()
    logits = net(torch.randn(2, 1, 16, 64, 64) * 3)
    assert logits.std() < 3


def test_clip_to_intensity_window_before_augmentation():
    from nnunet_ras.training.transforms import ClipToIntensityWindow
    image = torch.tensor([[-1000., -20., 40., 600.], [-1000., -20., 40., 600.]]).view(2, 1, 1, 4)
    segmentation = torch.ones(1, 1, 1, 4)
    out = ClipToIntensityWindow([[-150, 150], None])(image=image.clone(), segmentation=segmentation)
    assert out['segmentation'] is segmentation  # labels untouched
    out = out['image']
    torch.testing.assert_close(out[0].flatten(), torch.tensor([-150., -20., 40., 150.]))
    torch.testing.assert_close(out[1], image[1])


@pytest.mark.parametrize('layout', [torch.channels_last_3d, torch.contiguous_format])
def test_cat_channels_is_torch_cat_in_values_gradients_and_layout(layout):
    """The decoder's concatenation: torch.cat's values and gradients; channels-last maps stay channels-last."""
    a = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    b = torch.randn(2, 2, 4, 5, 6, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
    out, reference = cat_channels((a, b)), torch.cat((a, b), 1)
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    assert out.is_contiguous(memory_format=layout)
    weight = torch.randn_like(reference)
    grads = torch.autograd.grad((out * weight).sum(), (a, b))
    torch.testing.assert_close(grads, torch.autograd.grad((reference * weight).sum(), (a, b)), rtol=0, atol=0)
    mixed = cat_channels((a.detach().float(), b.detach()))  # dtypes promote as torch.cat's do
    assert mixed.dtype == torch.float64


@pytest.mark.parametrize('affine', [True, False])
@pytest.mark.parametrize('small_weight', [False, True])
def test_instance_norm_with_leaky_relu_keeps_only_its_output(affine, small_weight):
    """The norm with its leaky ReLU fused (nnU-Net's default block tail) computes nn.InstanceNorm3d + nn.LeakyReLU's
    values and gradients, and on a channels-last CPU map keeps one full-size map for the backward pass instead of
    two (the input is recovered from the output). With an affine weight near 0 the output cannot give the input back
    accurately: then the input is kept, and the gradients are still exact."""
    if small_weight and not affine:
        pytest.skip('no weight without affine parameters')
    x = torch.randn(3, 5, 4, 6, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_()
    reference = nn.InstanceNorm3d(5, affine=affine).double()
    if affine:
        with torch.no_grad():
            reference.weight.uniform_(0.5, 2.)
            reference.weight[2] = 1e-5 if small_weight else -0.7
            reference.bias.normal_()
    ours = InstanceNorm(5, affine=affine, negative_slope=0.01).double()
    ours.load_state_dict(reference.state_dict())
    grad = torch.randn(3, 5, 4, 6, 7, dtype=torch.float64)
    expected = nn.functional.leaky_relu(reference(x), 0.01)
    expected_grads = torch.autograd.grad(expected, [x, *reference.parameters()], grad)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = ours(x)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(torch.autograd.grad(y, [x, *ours.parameters()], grad), expected_grads)
    full_size = [t for t in saved if t.shape == x.shape]
    assert len(full_size) == (2 if small_weight else 1)
    assert any(t is y for t in full_size)


def test_ras_conv_fuses_the_plans_norm_and_leaky_relu():
    """nnU-Net's default tail (instance norm, leaky ReLU) becomes the fused norm with an nn.Identity in the nonlin's
    place (same state-dict keys); another nonlin stays a module of its own."""
    fused = RASConv(nn.Conv3d, 4, 8, nn.InstanceNorm3d, {'affine': True}, nn.LeakyReLU,
                    {'inplace': True, 'negative_slope': 0.02})
    assert fused.path[1].negative_slope == 0.02 and isinstance(fused.path[2], nn.Identity)
    plain = RASConv(nn.Conv3d, 4, 8, nn.InstanceNorm3d, {'affine': True}, nn.ReLU, {'inplace': True})
    assert plain.path[1].negative_slope is None and isinstance(plain.path[2], nn.ReLU)
    assert fused.state_dict().keys() == plain.state_dict().keys()
