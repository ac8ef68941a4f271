"""QAM + OCM quality weighting (SPEC section 2): the weights, the gradients into the QAM, a toy noisy-label problem,
the QAM trainers in nnU-Net's stock chain, and ``nnunet-ras quality``. Real computations throughout, on CPU.

Everything nnU-Net runs on one module workspace: Dataset991_TinyNoisy, the tiny phantom (Dataset990) with half of its
training labels dilated or eroded by ``nnunet-ras corrupt-labels``, planned once by stock nnU-Net (2d and 3d_fullres)
and trained once (``test_stock_chain_with_ras_qam``); the tests after that one build on it in file order.
"""
import csv
import json
import math
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json
from torch import nn

from nnunet_ras.cli import main
from nnunet_ras.dataset_checks import DatasetError
from nnunet_ras.networks.quality import QualityAssessmentNet, image_gradient_magnitude
from nnunet_ras.quality.ranking import corrupted_cases, quality_over_training, separation_auc
from nnunet_ras.quality.scoring import score_folder
from nnunet_ras.quality.weighting import label_channels, overfitting_control, quality_weights

DATASET = '991'
NAME = 'Dataset991_TinyNoisy'
RASQAM = 'nnUNetTrainerRASQAM_1epoch_5iters'


@pytest.fixture(scope='module')
def planned(tiny_phantom):
    """Dataset991_TinyNoisy (3 of 6 training labels corrupted, with the manifest), planned and preprocessed by stock
    nnU-Net in 2d and 3d_fullres."""
    tiny_phantom.run(['nnunet-ras', 'corrupt-labels', '-d', '990', '-o', DATASET, '-name', 'TinyNoisy',
                      '-fraction', '0.5', '-radius', '2', '4'])
    tiny_phantom.run(['nnUNetv2_plan_and_preprocess', '-d', DATASET, '-c', '2d', '3d_fullres', '-np', '1', '1',
                      '-npfp', '1'], step='nnUNetv2_plan_and_preprocess 991 (corrupted) 2d 3d_fullres')
    return tiny_phantom


@pytest.fixture
def nnunet_env(planned, monkeypatch, tmp_path):
    """nnU-Net's variables pointing at the planned workspace (results in a private folder), single-threaded DA."""
    monkeypatch.setenv('nnUNet_raw', planned.env['nnUNet_raw'])
    monkeypatch.setenv('nnUNet_preprocessed', planned.env['nnUNet_preprocessed'])
    monkeypatch.setenv('nnUNet_results', str(tmp_path / 'results'))
    monkeypatch.setenv('nnUNet_n_proc_DA', '0')
    return planned


def _trainer(ws, trainer_class, configuration: str):
    plans = load_json(ws.path('nnUNet_preprocessed', NAME, 'nnUNetPlans.json'))
    dataset_json = load_json(ws.path('nnUNet_preprocessed', NAME, 'dataset.json'))
    plans['continue_training'] = False  # what nnunetv2.run.run_training adds (nnU-Net >= 2.7 pops it)
    trainer = trainer_class(plans, configuration, 0, dataset_json, device=torch.device('cpu'))
    trainer.initialize()
    return trainer


def _batches(trainer):
    """nnU-Net's own training batches (sampling, augmentation, deep-supervision targets), in this process."""
    loader, _ = trainer.get_dataloaders()
    return loader


# ---------------------------------------------------------------------------------------------------- the weights

def test_weights_sum_to_batch_size_and_start_equal():
    torch.manual_seed(0)
    qam = QualityAssessmentNet(nn.Conv3d, 1 + 3, (4, 8))
    image = torch.randn(5, 1, 8, 16, 16)
    labels = label_channels(torch.randint(0, 3, (5, 1, 8, 16, 16)), 3, False)
    assert labels.shape == (5, 3, 8, 16, 16) and torch.all(labels.sum(1) == 1)
    for ocm_lambda in (None, 1.0):
        weights = quality_weights(overfitting_control(qam(image, labels), ocm_lambda))
        assert torch.allclose(weights, torch.ones(5)), 'the zero-initialised QAM must start with equal weights'
    for scores in (torch.randn(7) * 3, torch.tensor([50., -50., 0.])):
        assert math.isclose(float(quality_weights(scores).sum()), len(scores), rel_tol=1e-5)
    # ignore label (the largest label, no channel) and negative values: no crash, zero / background channels
    odd = label_channels(torch.tensor([0, 1, 2, 3, -1]).view(1, 1, 5), 3, False)
    assert odd[0].T.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0], [1, 0, 0]]


def test_old_quality_names_warn_and_give_the_moved_helpers():
    import nnunet_ras.networks.quality as old
    for name, helper in (('one_hot_label', label_channels), ('overfitting_control', overfitting_control),
                         ('quality_weights', quality_weights)):
        with pytest.warns(DeprecationWarning, match='nnunet_ras.quality.weighting'):
            assert getattr(old, name) is helper
    with pytest.raises(AttributeError):
        old.no_such_name


def test_patches_without_contour_keep_weight_one():
    scores = torch.tensor([2.0, -1.0, 0.5, 3.0])
    judged = torch.tensor([True, False, True, False])
    weights = quality_weights(scores, judged)
    assert weights[1] == 1 and weights[3] == 1
    assert math.isclose(float(weights.sum()), 4, rel_tol=1e-6)
    assert math.isclose(float(weights[0] / weights[2]), math.exp(1.5), rel_tol=1e-5)
    assert torch.equal(quality_weights(scores, torch.zeros(4, dtype=torch.bool)), torch.ones(4))


@pytest.mark.parametrize('ocm_lambda', [0.5, 1.0, 2.0])
def test_ocm_bounds_the_weight_ratio(ocm_lambda):
    raw = torch.tensor([1e4, -1e4, 3.0, 0.0, -1e6])
    bound = math.exp(2 * ocm_lambda)
    with_ocm = quality_weights(overfitting_control(raw, ocm_lambda))
    assert torch.isfinite(with_ocm).all()
    assert float(with_ocm.max() / with_ocm.min()) <= bound * (1 + 1e-5)
    assert math.isclose(float(with_ocm.sum()), len(raw), rel_tol=1e-5)
    without = quality_weights(overfitting_control(raw, None))
    assert float(without.max() / without.min()) > bound  # plain QAM: one sample takes (almost) all the weight


def test_separation_auc_and_manifest(nnunet_env):
    corrupted = {'a': False, 'b': False, 'c': True, 'd': True}
    assert separation_auc({'a': 0.9, 'b': 0.5, 'c': 0.1, 'd': -0.3}, corrupted) == 1.0
    assert separation_auc({'a': 0.65, 'b': 0.5, 'c': 0.7, 'd': 0.6}, corrupted) == 0.25
    assert separation_auc({'a': 0.9, 'b': 0.5}, corrupted) is None  # one class only
    assert corrupted_cases('Dataset990_TinyPhantom') is None  # no manifest
    manifest = corrupted_cases(NAME)
    assert len(manifest) == 6 and sum(manifest.values()) == 3


def test_quality_over_training_follows_the_log():
    """Clean and corrupted cases weighted alike early on, apart late: the spans show when the QAM separated them."""
    corrupted = {'a': False, 'b': False, 'c': True, 'd': True, 'held_out': True}
    log = {}
    for epoch in range(10):
        late = epoch >= 5
        for case, clean in (('a', True), ('b', True), ('c', False), ('d', False)):
            score = (0.5 if clean else -0.5) if late else {'a': 0.1, 'b': -0.1, 'c': 0.2, 'd': -0.2}[case]
            log.setdefault(case, []).append((epoch, score, (1.5 if clean else 0.5) if late else 1.0))
    log['held_out'] = [(epoch, -1.0, 0.1) for epoch in range(10)]  # not a training case: not counted
    spans = quality_over_training(log, corrupted, ['a', 'b', 'c', 'd', 'not_in_manifest'], num_epochs=10, windows=2)
    assert [(s['first_epoch'], s['last_epoch']) for s in spans] == [(0, 4), (5, 9)]
    early, late = spans
    assert early['mean_weight_clean'] == early['mean_weight_corrupted'] == 1.0 and early['auc_logged_score'] == 0.5
    assert (late['mean_weight_clean'], late['mean_weight_corrupted'], late['auc_logged_score']) == (1.5, 0.5, 1.0)
    # a span whose batches held only clean cases has no AUC; more windows than epochs gives one span per epoch
    only_clean = quality_over_training({'a': [(0, 0.3, 1.2)], 'c': [(1, 0.1, 0.8)]}, corrupted, ['a', 'c'], 2, 4)
    assert [(s['first_epoch'], s['auc_logged_score'], s['mean_weight_corrupted']) for s in only_clean] == \
        [(0, None, None), (1, None, 0.8)]


# ------------------------------------------------------------------------------------ toy noisy-label problem

def _discs(gen: torch.Generator, corrupt: int, n: int = 4, size: int = 32):
    """n noisy images of one bright disc each, with their masks; the mask of sample ``corrupt`` is moved away."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing='ij')
    cy, cx = (torch.randint(11, 21, (n, 1, 1), generator=gen) for _ in range(2))
    radius = torch.randint(5, 9, (n, 1, 1), generator=gen)
    masks = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
    images = masks.float() + 0.3 * torch.randn(n, size, size, generator=gen)
    target = masks[:, None].long()
    target[corrupt] = torch.roll(target[corrupt], (12, 12), (1, 2))  # a contour 17 px off its structure
    return images[:, None], target


def _soft_dice_losses(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """One soft Dice loss per sample (foreground class)."""
    p, g = torch.softmax(logits, 1)[:, 1].flatten(1), (target[:, 0] == 1).float().flatten(1)
    return 1 - (2 * (p * g).sum(1) + 1) / (p.sum(1) + g.sum(1) + 1)


@pytest.fixture
def one_thread():
    """Small tensors: one thread is fastest, and does not fight the other processes for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize('gradient_channels', [0, 1], ids=['published QAM', 'with image gradient'])
def test_toy_problem_wrong_label_gets_less_weight(one_thread, gradient_channels):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    seg = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 2, 1))
    qam = QualityAssessmentNet(nn.Conv2d, 1 + 2, (8, 16), image_gradient_channels=gradient_channels)
    assert qam.features[0].in_channels == 3 + gradient_channels
    optimizer = torch.optim.Adam([*seg.parameters(), *qam.parameters()], lr=1e-2)

    def weights(image, target):
        return quality_weights(overfitting_control(qam(image, label_channels(target, 2, False)), 1.0))

    for step in range(60):
        image, target = _discs(gen, corrupt=step % 4)
        loss = (weights(image, target) * _soft_dice_losses(seg(image), target)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():  # fresh batches the QAM never saw
        final = torch.stack([weights(*_discs(gen, corrupt=2)) for _ in range(5)])
    clean = final[:, [0, 1, 3]]
    assert torch.all(final[:, 2] < 1) and torch.all(final[:, 2] < clean.mean(1)), final
    assert torch.all(final.max(1).values / final.min(1).values <= math.exp(2) * (1 + 1e-5))  # the OCM's bound


def test_image_gradient_magnitude_marks_edges_only():
    step = torch.zeros(1, 1, 6, 8)
    step[..., 4:] = 3.0  # a vertical edge between columns 3 and 4
    magnitude = image_gradient_magnitude(step)
    assert magnitude.shape == step.shape
    assert torch.allclose(magnitude[..., [3, 4]], torch.tensor(1.5))  # central differences: 3 / 2
    assert torch.all(magnitude[..., [0, 1, 2, 5, 6, 7]] == 0)
    ramp = torch.arange(5.).view(1, 1, 1, 5).expand(2, 1, 4, 5) * torch.tensor([1., 2.]).view(2, 1, 1, 1)
    slopes = torch.tensor([1., 2.]).view(2, 1, 1, 1).expand_as(ramp)
    assert torch.allclose(image_gradient_magnitude(ramp), slopes)  # one per sample, everywhere, borders included
    diagonal = torch.arange(4.).view(1, 1, 4, 1, 1) + torch.arange(4.).view(1, 1, 1, 4, 1) + torch.zeros(1, 1, 1, 1, 3)
    assert torch.allclose(image_gradient_magnitude(diagonal), torch.tensor(math.sqrt(2)))  # 3D, slope 1 along z, y
    flat_z = step[:, :, None]  # (1, 1, 1, 6, 8): a size-1 axis has no derivative
    assert torch.equal(image_gradient_magnitude(flat_z), magnitude[:, :, None])


# ------------------------------------------------------------------------------------- through a real trainer

def test_train_step_updates_qam(nnunet_env):
    from nnunet_ras.training import nnUNetTrainerQAM_1epoch_5iters
    trainer = _trainer(nnunet_env, nnUNetTrainerQAM_1epoch_5iters, '3d_fullres')
    batches = _batches(trainer)
    batch = next(batches)
    assert batch['data'].shape[0] >= 2 and isinstance(batch['target'], list)
    initial = {k: v.detach().clone() for k, v in trainer.qam.state_dict().items()}
    network = {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}
    first = trainer.train_step(batch)
    assert np.isfinite(first['loss'])
    # zero-initialised score layer: the first step moves the score weights (the conv weights get no gradient yet)
    assert not torch.equal(trainer.qam.score.weight, initial['score.weight'])
    trainer.train_step(next(batches))
    first_conv = trainer.qam.features[0].weight
    assert not torch.equal(first_conv, initial['features.0.weight']), 'no gradient reached the QAM convs'
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0
    assert any(not torch.equal(v, network[k]) for k, v in trainer.network.state_dict().items())
    assert not any(k.startswith('qam') for k in trainer.network.state_dict())
    logged = [entry for entries in trainer.quality_log.values() for entry in entries]
    assert len(logged) == 2 * batch['data'].shape[0] and all(np.isfinite(w) for _, _, w in logged)


def test_image_gradient_qam_trains_saves_and_scores(nnunet_env):
    from nnunet_ras.quality.scoring import QualityModel
    from nnunet_ras.training import nnUNetTrainerQAM_OCMLambda2_ImageGradient
    trainer = _trainer(nnunet_env, nnUNetTrainerQAM_OCMLambda2_ImageGradient, '2d')
    heads = trainer.label_manager.num_segmentation_heads
    channels = trainer.num_input_channels
    assert trainer.qam.image_gradient_channels == channels
    assert trainer.qam.features[0].in_channels == 2 * channels + heads
    batches = _batches(trainer)
    initial = trainer.qam.features[0].weight.detach().clone()
    for _ in range(2):
        assert np.isfinite(trainer.train_step(next(batches))['loss'])
    moved = (trainer.qam.features[0].weight - initial).abs().sum((0, 2, 3))
    assert moved[channels] > 0, 'no gradient reached the weights of the gradient-magnitude input'
    trainer.save_checkpoint(os.path.join(trainer.output_folder, 'checkpoint_final.pth'))
    preprocessed = nnunet_env.path('nnUNet_preprocessed', NAME)  # what nnU-Net copies at the start of training
    shutil.copy(os.path.join(preprocessed, 'nnUNetPlans.json'), os.path.join(trainer.output_folder_base, 'plans.json'))
    shutil.copy(os.path.join(preprocessed, 'dataset.json'), trainer.output_folder_base)
    model = QualityModel(trainer.output_folder_base, '0')  # what ``nnunet-ras quality`` builds from the checkpoint
    assert model.qam.image_gradient_channels == channels and model.ocm_lambda == 2.0
    batch = next(batches)
    labels = label_channels(batch['target'][0], heads, False)
    trainer.qam.eval()
    with torch.no_grad():
        assert torch.allclose(model.qam(batch['data'], labels), trainer.qam(batch['data'], labels), atol=1e-6)


def test_warmup_trains_unweighted_then_weights(nnunet_env):
    """Warm-up: every weight 1 and a QAM that does not move while the network learns; then the weighting starts."""
    from nnunet_ras.training import nnUNetTrainerQAM_OCMLambda2_ImageGradient_WarmUp
    trainer = _trainer(nnunet_env, nnUNetTrainerQAM_OCMLambda2_ImageGradient_WarmUp, '2d')
    start = round(0.2 * trainer.num_epochs)
    assert start > 0 and not trainer.weighting
    batches = _batches(trainer)
    qam = {k: v.detach().clone() for k, v in trainer.qam.state_dict().items()}
    network = {k: v.detach().clone() for k, v in trainer.network.state_dict().items()}
    for _ in range(2):
        assert np.isfinite(trainer.train_step(next(batches))['loss'])
    assert all(torch.equal(v, qam[k]) for k, v in trainer.qam.state_dict().items()), 'the QAM learned in warm-up'
    assert any(not torch.equal(v, network[k]) for k, v in trainer.network.state_dict().items())
    assert {w for entries in trainer.quality_log.values() for _, _, w in entries} == {1.0}
    trainer.current_epoch = start
    assert trainer.weighting
    trainer.quality_log.clear()
    for _ in range(2):
        trainer.train_step(next(batches))
    assert not torch.equal(trainer.qam.score.weight, qam['score.weight']), 'the QAM did not start after warm-up'
    assert {w for entries in trainer.quality_log.values() for _, _, w in entries} != {1.0}


def test_ranking_qam_is_the_weight_average_of_the_last_epochs(nnunet_env):
    """The QAM that ranks and scores is the mean of the last fifth of epochs' QAMs; it survives the checkpoint, and
    ``nnunet-ras quality`` scores with it."""
    from nnunet_ras.quality.scoring import QualityModel
    from nnunet_ras.training import nnUNetTrainerQAM_OCMLambda2
    trainer = _trainer(nnunet_env, nnUNetTrainerQAM_OCMLambda2, '2d')
    trainer.num_epochs = 10  # the last 2 epochs are averaged
    batches = _batches(trainer)
    snapshots = []
    for epoch in range(7, 10):
        trainer.current_epoch = epoch
        trainer.train_step(next(batches))
        trainer.average_qam()
        if epoch < 8:
            assert int(trainer.qam_average.n_averaged) == 0 and trainer.ranking_qam is trainer.qam
        else:
            snapshots.append({k: v.detach().clone() for k, v in trainer.qam.state_dict().items()})
    assert int(trainer.qam_average.n_averaged) == 2 and trainer.ranking_qam is not trainer.qam
    average = trainer.ranking_qam.state_dict()
    for name, value in average.items():
        assert torch.allclose(value, (snapshots[0][name] + snapshots[1][name]) / 2, atol=1e-6), name
    assert not torch.equal(average['score.weight'], trainer.qam.state_dict()['score.weight'])

    trainer.save_checkpoint(os.path.join(trainer.output_folder, 'checkpoint_final.pth'))
    resumed = _trainer(nnunet_env, nnUNetTrainerQAM_OCMLambda2, '2d')
    resumed.load_checkpoint(os.path.join(trainer.output_folder, 'checkpoint_final.pth'))
    assert int(resumed.qam_average.n_averaged) == 2
    assert all(torch.equal(v, average[k]) for k, v in resumed.ranking_qam.state_dict().items())
    assert all(torch.equal(v, snapshots[1][k]) for k, v in resumed.qam.state_dict().items())
    preprocessed = nnunet_env.path('nnUNet_preprocessed', NAME)
    shutil.copy(os.path.join(preprocessed, 'nnUNetPlans.json'), os.path.join(trainer.output_folder_base, 'plans.json'))
    shutil.copy(os.path.join(preprocessed, 'dataset.json'), trainer.output_folder_base)
    model = QualityModel(trainer.output_folder_base, '0')
    assert model.averaged_epochs == 2
    assert all(torch.equal(v, average[k]) for k, v in model.qam.state_dict().items())


def test_2d_batch_with_empty_labels_gives_finite_loss(nnunet_env):
    from nnunet_ras.training import nnUNetTrainerRASQAM_1epoch_5iters
    from nnunet_ras import cpu_memory
    trainer = _trainer(nnunet_env, nnUNetTrainerRASQAM_1epoch_5iters, '2d')
    assert cpu_memory._kept  # a RAS trainer initialised on the CPU keeps freed memory for reuse (glibc, Linux)
    batches = _batches(trainer)
    batch = next(batches)
    assert batch['data'].ndim == 4 and batch['data'].shape[0] >= 2
    batch['target'] = [torch.zeros_like(t) for t in batch['target']]
    result = trainer.train_step(batch)
    assert np.isfinite(result['loss'])
    assert all(torch.isfinite(p).all() for p in [*trainer.network.parameters(), *trainer.qam.parameters()])
    # half empty, half with labels
    batch = next(batches)
    for t in batch['target']:
        t[: len(t) // 2] = 0
    assert np.isfinite(trainer.train_step(batch)['loss'])


# ---------------------------------------------------------------- small-loss selection, the simple alternative

def test_small_loss_mask_drops_the_largest_losses_among_contour_patches():
    from nnunet_ras.training.small_loss import small_loss_mask
    losses = torch.tensor([0.9, 0.1, 0.8, 0.3, 0.95, 0.2])
    judged = torch.tensor([True, True, True, True, False, True])  # sample 4 has no contour: never dropped
    assert small_loss_mask(losses, judged, 0.0).all()
    assert small_loss_mask(losses, judged, 0.4).tolist() == [False, True, False, True, True, True]  # 2 of 5
    assert small_loss_mask(losses, judged, 1.0).tolist() == [False, False, False, False, True, False]
    everything = torch.ones(6, dtype=torch.bool)
    assert small_loss_mask(losses, everything, 1.0).sum() == 1  # never the whole batch
    assert small_loss_mask(losses, torch.zeros(6, dtype=torch.bool), 0.5).all()


def test_small_loss_drops_the_wrong_label_once_the_network_fits_the_clean_ones(one_thread):
    from nnunet_ras.training.small_loss import small_loss_mask
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    seg = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(8, 2, 1))
    optimizer = torch.optim.Adam(seg.parameters(), lr=1e-2)
    for step in range(60):  # a quarter of the labels wrong, the network trained on the kept ones only
        image, target = _discs(gen, corrupt=step % 4)
        losses = _soft_dice_losses(seg(image), target)
        keep = small_loss_mask(losses, torch.ones(4, dtype=torch.bool), 0.25 * min(1.0, step / 10))
        optimizer.zero_grad()
        losses[keep].mean().backward()
        optimizer.step()
    with torch.no_grad():  # fresh batches: the dropped sample is the one with the wrong label
        dropped = [int((~small_loss_mask(_soft_dice_losses(seg(i), t), torch.ones(4, dtype=torch.bool),
                                         0.25)).nonzero()) for i, t in (_discs(gen, corrupt=c) for c in (0, 1, 2, 3))]
    assert dropped == [0, 1, 2, 3]


def test_small_loss_trainer_trains_on_the_kept_samples(nnunet_env):
    from nnunet_ras.training import nnUNetTrainerSmallLoss_1epoch_5iters
    from nnunet_ras.training.losses import per_sample_losses
    from nnunet_ras.quality.weighting import holds_contour
    from nnunet_ras.training.small_loss import small_loss_mask
    trainer = _trainer(nnunet_env, nnUNetTrainerSmallLoss_1epoch_5iters, '3d_fullres')
    trainer.num_epochs = 20  # the rate ramps up over the first 2 epochs
    rates = []
    for epoch in (0, 1, 5):
        trainer.current_epoch = epoch
        rates.append(trainer.current_forget_rate())
    assert rates == [0, trainer.forget_rate / 2, trainer.forget_rate] and trainer.forget_rate == 0.25
    batch = next(_batches(trainer))
    data, target = batch['data'], batch['target']
    trainer.network.train()
    with torch.no_grad():
        output = trainer.network(data)
        plain = trainer.loss.loss(output, target)
        assert torch.equal(trainer.loss(output, target), plain)  # validation: the plain loss
    output = trainer.network(data)
    losses = per_sample_losses(trainer.loss.loss, output, target)
    judged = holds_contour(target[0], trainer.label_manager.num_segmentation_heads, False)
    keep = small_loss_mask(losses, judged, trainer.forget_rate)
    assert judged.sum() >= 2 and (~keep).sum() == round(trainer.forget_rate * int(judged.sum()))
    assert torch.allclose(trainer.loss(output, target), losses[keep].mean())
    before = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    assert np.isfinite(trainer.train_step(batch)['loss'])
    assert any(not torch.equal(v, before[k]) for k, v in trainer.network.state_dict().items())


# -------------------------------------------------------------------------- stock chain and nnunet-ras quality

def _model_folder(ws, trainer=RASQAM, dataset=NAME):
    return ws.path('nnUNet_results', dataset, f'{trainer}__nnUNetPlans__3d_fullres')


def test_stock_chain_with_ras_qam(planned):
    ws = planned
    ws.run(['nnUNetv2_train', DATASET, '3d_fullres', '0', '-tr', RASQAM, '-device', 'cpu'],
           step=f'nnUNetv2_train {RASQAM}')
    fold = os.path.join(_model_folder(ws), 'fold_0')
    checkpoint = torch.load(os.path.join(fold, 'checkpoint_final.pth'), map_location='cpu', weights_only=False)
    quality = checkpoint['quality_assessment']
    assert quality['ocm_lambda'] == 1.0 and quality['features_per_stage'] == [16, 32, 64, 128]
    assert any(k.startswith('features.') for k in quality['weights']) and 'score.weight' in quality['weights']
    network = checkpoint['network_weights']
    assert any('.attention.' in k for k in network), 'not RAS U-Net'
    assert not any('qam' in k or k.startswith(('score.', 'features.')) for k in network)
    with open(os.path.join(fold, 'quality_ranking.csv')) as f:
        rows = list(csv.DictReader(f))
    training_cases = sorted(f[:-len('.nii.gz')] for f in os.listdir(ws.path('nnUNet_raw', NAME, 'labelsTr')))
    assert sorted(r['case'] for r in rows) == training_cases
    assert len(rows) == 6
    assert [float(r['score']) for r in rows] == sorted(float(r['score']) for r in rows)
    assert all(-1 <= float(r['score']) <= 1 for r in rows)  # OCM lambda 1
    assert {r['split'] for r in rows} == {'train', 'validation'}
    ranking = json.load(open(os.path.join(fold, 'quality_ranking.json')))
    auc = ranking['summary']['auc_train']  # the data set has a corruption manifest
    assert isinstance(auc, float) and 0 <= auc <= 1
    # one epoch: the weight average holds that epoch's QAM alone, so it ranks as the final QAM does
    assert ranking['summary']['qam_averaged_epochs'] == quality['averaged_epochs'] == 1
    assert all(torch.equal(v, quality['weights'][k]) for k, v in quality['average_weights'].items())
    assert ranking['summary']['auc_train_final_qam'] == auc
    assert all(r['score'] == r['score_final_qam'] for r in ranking['cases'])
    (span,) = ranking['summary']['over_training']  # one epoch: one span, with the weights of its batches' cases
    assert (span['first_epoch'], span['last_epoch']) == (0, 0)
    weights = [span['mean_weight_clean'], span['mean_weight_corrupted']]
    assert any(w is not None for w in weights) and all(w is None or w > 0 for w in weights)
    manifest = json.load(open(ws.path('nnUNet_raw', NAME, 'corruption_manifest.json')))
    assert {r['case']: r['corrupted'] for r in ranking['cases']} == \
           {c: entry['corrupted'] for c, entry in manifest['cases'].items()}
    assert {r['corrupted'] for r in rows} == {'True', 'False'}

    out = os.path.join(ws.root, 'pred_rasqam')
    ws.run(['nnUNetv2_predict', '-i', ws.path('nnUNet_raw', NAME, 'imagesTs'), '-o', out, '-d', DATASET,
            '-c', '3d_fullres', '-tr', RASQAM, '-f', '0', '-device', 'cpu', '-npp', '1', '-nps', '1'], step=f'nnUNetv2_predict {RASQAM}')
    predictions = sorted(f for f in os.listdir(out) if f.endswith('.nii.gz'))
    assert len(predictions) == 2


def test_quality_command_scores_predictions(planned, monkeypatch, capsys):
    ws = planned
    for var in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results'):
        monkeypatch.setenv(var, ws.env[var])
    images = ws.path('nnUNet_raw', NAME, 'imagesTs')
    segs = os.path.join(ws.root, 'pred_rasqam')
    out = os.path.join(ws.root, 'quality_out')
    assert main(['quality', '-i', images, '-s', segs, '-m', _model_folder(ws), '-f', '0', '-o', out]) == 0
    with open(os.path.join(out, 'quality_scores.csv')) as f:
        rows = list(csv.DictReader(f))
    cases = sorted(f[:-len('.nii.gz')] for f in os.listdir(segs) if f.endswith('.nii.gz'))
    assert sorted(r['case'] for r in rows) == cases and len(cases) == 2
    assert [r['rank'] for r in rows] == ['1', '2']
    assert all(-1 <= float(r['score']) <= 1 for r in rows)
    assert json.load(open(os.path.join(out, 'quality_scores.json')))['summary']['ocm_lambda'] == 1.0
    # the API agrees with the command; the clean test labels (labelsTs) score too
    api = score_folder(images, segs, _model_folder(ws), '0', output_folder=os.path.join(ws.root, 'api_out'))
    assert {r['case']: r['score'] for r in api} == pytest.approx({r['case']: float(r['score']) for r in rows})
    truth = score_folder(images, ws.path('nnUNet_raw', NAME, 'labelsTs'), _model_folder(ws),
                         output_folder=os.path.join(ws.root, 'truth_out'))
    assert sorted(r['case'] for r in truth) == cases and all(np.isfinite(r['score']) for r in truth)

    # a model trained with a non-QAM trainer: its checkpoint holds no QAM
    plain = ws.path('nnUNet_results', NAME, 'nnUNetTrainerRAS_1epoch_5iters__nnUNetPlans__3d_fullres')
    os.makedirs(os.path.join(plain, 'fold_0'), exist_ok=True)
    for name in ('plans.json', 'dataset.json'):
        shutil.copy(os.path.join(_model_folder(ws), name), plain)
    checkpoint = torch.load(os.path.join(_model_folder(ws), 'fold_0', 'checkpoint_final.pth'), map_location='cpu',
                            weights_only=False)
    del checkpoint['quality_assessment']
    checkpoint['trainer_name'] = 'nnUNetTrainerRAS_1epoch_5iters'
    torch.save(checkpoint, os.path.join(plain, 'fold_0', 'checkpoint_final.pth'))
    capsys.readouterr()
    assert main(['quality', '-i', images, '-s', segs, '-m', plain]) == 2
    err = capsys.readouterr().err
    assert err.startswith('nnunet-ras: error:') and 'checkpoint_final.pth' in err
    assert 'no quality assessment module' in err and 'nnUNetTrainerRAS_1epoch_5iters' in err

    # a segmentation without its image
    orphans = os.path.join(ws.root, 'orphans')
    os.makedirs(orphans, exist_ok=True)
    shutil.copy(os.path.join(segs, cases[0] + '.nii.gz'), os.path.join(orphans, 'NoSuchCase_001.nii.gz'))
    with pytest.raises(DatasetError, match='NoSuchCase_001.nii.gz.*NoSuchCase_001_0000.nii.gz.*missing'):
        score_folder(images, orphans, _model_folder(ws))

    # a segmentation on another grid than its image
    shifted = os.path.join(ws.root, 'shifted')
    os.makedirs(shifted, exist_ok=True)
    seg = sitk.ReadImage(os.path.join(segs, cases[0] + '.nii.gz'))
    cropped = seg[:, :, : seg.GetSize()[2] - 2]
    sitk.WriteImage(cropped, os.path.join(shifted, cases[0] + '.nii.gz'))
    with pytest.raises(DatasetError, match=f'{cases[0]}.nii.gz: the segmentation is on another grid.*size'):
        score_folder(images, shifted, _model_folder(ws))
    moved = sitk.Image(seg)
    moved.SetSpacing([s * 1.5 for s in seg.GetSpacing()])
    sitk.WriteImage(moved, os.path.join(shifted, cases[0] + '.nii.gz'))
    with pytest.raises(DatasetError, match='on another grid.*spacing'):
        score_folder(images, shifted, _model_folder(ws))
