"""The QAM trainers under nnU-Net's multi-GPU training (DDP), on CPU: two processes in a ``gloo`` group train
``nnUNetTrainerRASQAM`` on different batches through the trainer's own ``train_step``, and the QAM must stay the same
on both ranks; without its DDP wrapper (the control) it does not. The checkpoint and the training-end ranking, written
by rank 0, must hold both ranks' quality logs. A run with ``nnUNetv2_train ... -num_gpus 2`` needs two GPUs and is
not tested here.

nnU-Net's DDP is CUDA-only: in a process group its trainer moves itself to ``cuda:<rank>`` and wraps the network
with ``device_ids=[rank]``. Each rank here sets the trainer's device back to the CPU before ``initialize`` and gives
nnU-Net's network wrapper no device ids; everything else is the code path of ``nnUNetv2_train -num_gpus 2``.
"""
import json
import os
import shutil
from datetime import timedelta

import numpy as np
import pytest
import torch
from torch import distributed
from torch.nn.parallel import DistributedDataParallel

DATASET = '990'
NAME = 'Dataset990_TinyPhantom'
TRAINER = 'nnUNetTrainerRASQAM_1epoch_5iters'
WORLD_SIZE = 2
BATCH_SIZE = 3  # shares of 2 and 1 samples: uneven, and a share whose own softmax would always give weight 1
SYNCED_STEPS, CONTROL_STEPS = 4, 1
NO_CONTOUR = {2: (0, 1), 3: (1,)}  # step -> the ranks whose share holds no contour in that step


def _cpu_ddp(module, device_ids=None, **kwargs):
    """nnU-Net's network wrapper without its CUDA device ids."""
    return DistributedDataParallel(module, **kwargs)


def _trainer_on_cpu():
    """The trainer as ``nnUNetv2_train -num_gpus 2`` builds it on this rank (the plan's batch set to BATCH_SIZE),
    moved back to the CPU."""
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as nnunet_trainer_module

    from nnunet_ras import training
    nnunet_trainer_module.DDP = _cpu_ddp
    plans = load_json(join(nnUNet_preprocessed, NAME, 'nnUNetPlans.json'))
    plans['configurations']['3d_fullres']['batch_size'] = BATCH_SIZE
    plans['continue_training'] = False  # what nnunetv2.run.run_training adds
    dataset_json = load_json(join(nnUNet_preprocessed, NAME, 'dataset.json'))
    trainer = getattr(training, TRAINER)(plans, '3d_fullres', 0, dataset_json, device=torch.device('cpu'))
    trainer.device, trainer.grad_scaler = torch.device('cpu'), None
    trainer.initialize()
    return trainer


def _qam_weights(trainer) -> dict:
    return {k: v.detach().clone() for k, v in trainer.qam.state_dict().items()}


def _train_on_rank(rank: int, out: str):
    """One rank: SYNCED_STEPS steps, the end of training (checkpoint, ranking), CONTROL_STEPS steps with the bare
    QAM, reloading the checkpoint; what the test checks goes to ``out/rank<rank>.pt``."""
    torch.set_num_threads(1)
    distributed.init_process_group('gloo', rank=rank, world_size=WORLD_SIZE, timeout=timedelta(seconds=60))
    try:
        np.random.seed(rank)  # the data loaders draw different patches on the two ranks
        torch.manual_seed(rank)  # and the QAMs start different: DDP must start both from rank 0's
        trainer = _trainer_on_cpu()
        if rank == 0:
            trainer.do_split()  # writes the split file once, before both ranks read it
        distributed.barrier()
        batches, _ = trainer.get_dataloaders()
        result = {'start': _qam_weights(trainer), 'keys': [], 'data_sums': [], 'weights': []}
        for step in range(SYNCED_STEPS):
            batch = next(batches)
            if rank in NO_CONTOUR.get(step, ()):  # weights 1 here, yet the rank must join every exchange
                batch['target'] = [torch.zeros_like(t) for t in batch['target']]
            keys = [str(k) for k in batch['keys']]
            logged = {k: len(trainer.quality_log.get(k, ())) for k in keys}
            trainer.train_step(batch)
            result['keys'].append(keys)
            result['data_sums'].append(float(batch['data'].sum()))
            # this step's weights (a case may be drawn twice into one batch)
            result['weights'].append([w for k, n in logged.items() for _, _, w in trainer.quality_log[k][n:]])
        result['synced'] = _qam_weights(trainer)
        trainer.on_train_end()
        trainer.training_qam = trainer.qam  # the control: the same training without the QAM's DDP wrapper
        for _ in range(CONTROL_STEPS):
            trainer.train_step(next(batches))
        result['control'] = _qam_weights(trainer)
        trainer.load_checkpoint(os.path.join(trainer.output_folder, 'checkpoint_final.pth'))
        result['reloaded_log'] = trainer.gathered_quality_log()
        result['output_folder'] = trainer.output_folder
        torch.save(result, os.path.join(out, f'rank{rank}.pt'))
    finally:
        distributed.destroy_process_group()


@pytest.fixture(scope='module')
def preprocessed(tiny_phantom):
    tiny_phantom.run(['nnUNetv2_plan_and_preprocess', '-d', DATASET, '-c', '3d_fullres', '-np', '1', '-npfp', '1'],
                     step='nnUNetv2_plan_and_preprocess 990 3d_fullres (DDP test)')
    return tiny_phantom


def _entries(log: dict) -> int:
    return sum(len(entries) for entries in log.values())


def test_qam_stays_synchronised_across_ranks(preprocessed, monkeypatch, tmp_path):
    from nnunetv2.run.run_training import find_free_network_port

    from nnunet_ras.quality.scoring import QualityModel
    for var in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results'):
        monkeypatch.setenv(var, preprocessed.env[var])
    monkeypatch.setenv('nnUNet_n_proc_DA', '0')
    monkeypatch.setenv('MASTER_ADDR', '127.0.0.1')
    monkeypatch.setenv('MASTER_PORT', str(find_free_network_port()))
    torch.multiprocessing.spawn(_train_on_rank, args=(str(tmp_path),), nprocs=WORLD_SIZE)
    ranks = [torch.load(tmp_path / f'rank{rank}.pt', weights_only=False) for rank in range(WORLD_SIZE)]
    first, second = ranks

    # nnU-Net split the batch of 3 into shares of 2 and 1, and the ranks drew different patches
    assert [len(keys) for keys in first['keys']] == [2] * SYNCED_STEPS
    assert [len(keys) for keys in second['keys']] == [1] * SYNCED_STEPS
    assert all(a != b for a, b in zip(first['data_sums'], second['data_sums']))

    # with the wrapper: identical QAMs on both ranks, every weight moved; without it (control) they drift apart
    assert all(torch.equal(first['start'][k], second['start'][k]) for k in first['start'])
    assert all(torch.equal(first['synced'][k], second['synced'][k]) for k in first['synced'])
    moved = [k for k in first['start'] if not torch.equal(first['start'][k], first['synced'][k])]
    assert moved == list(first['start']), f"unchanged: {set(first['start']) - set(moved)}"
    assert any(not torch.equal(first['control'][k], second['control'][k]) for k in first['control'])

    # the softmax ran over the whole batch: the second step's weights (the first's are all 1, from the
    # zero-initialised score layer) sum to the batch size over both ranks, not to each rank's share
    assert first['weights'][0] == [1.0, 1.0] and second['weights'][0] == [1.0]
    assert sum(first['weights'][1] + second['weights'][1]) == pytest.approx(BATCH_SIZE, rel=1e-5)
    assert second['weights'][1] != [1.0] and sum(first['weights'][1]) != pytest.approx(2, rel=1e-6)
    # patches without contour keep weight 1: the whole batch's, then rank 1's while rank 0's share the rest
    assert first['weights'][2] == [1.0, 1.0] and second['weights'][2] == [1.0]
    assert second['weights'][3] == [1.0] and sum(first['weights'][3]) == pytest.approx(2, rel=1e-5)

    # rank 0's checkpoint: the QAM without the wrapper's 'module.' prefix, as nnunet-ras quality reads it, and the
    # quality log of both ranks; reloading it does not count rank 0's entries twice
    fold = first['output_folder']
    checkpoint = torch.load(os.path.join(fold, 'checkpoint_final.pth'), map_location='cpu', weights_only=False)
    quality = checkpoint['quality_assessment']
    assert not any(k.startswith('module.') for k in quality['weights'])
    model = os.path.dirname(fold)
    for source, name in (('nnUNetPlans.json', 'plans.json'), ('dataset.json', 'dataset.json')):
        shutil.copy(preprocessed.path('nnUNet_preprocessed', NAME, source), os.path.join(model, name))
    scorer = QualityModel(model, '0')
    assert all(torch.equal(v, first['synced'][k]) for k, v in scorer.qam.state_dict().items())
    logged_cases = {key for rank in ranks for keys in rank['keys'] for key in keys}
    assert set(quality['log']) == logged_cases
    assert _entries(quality['log']) == BATCH_SIZE * SYNCED_STEPS
    assert _entries(first['reloaded_log']) == _entries(second['reloaded_log']) == BATCH_SIZE * SYNCED_STEPS

    # the ranking rank 0 wrote counts the batches of both ranks
    with open(os.path.join(fold, 'quality_ranking.json')) as f:
        rows = json.load(f)['cases']
    assert len(rows) == 6
    assert sum(row['logged_batches'] for row in rows) == BATCH_SIZE * SYNCED_STEPS


def test_rank_local_keeps_the_deep_supervision_weights():
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from nnunet_ras.training.losses import SquaredDenominatorDiceLoss, rank_local, with_deep_supervision
    assert with_deep_supervision(SquaredDenominatorDiceLoss(), 3).weight_factors[-1] == 0
    squared = with_deep_supervision(SquaredDenominatorDiceLoss(ddp=True), 3, ddp=True)
    weights = squared.weight_factors
    assert 0 < weights[-1] < 1e-5 and sum(weights) == pytest.approx(1)  # DDP: every seg head gets a gradient
    nnunet = DC_and_CE_loss({'batch_dice': True, 'smooth': 1e-5, 'do_bg': False, 'ddp': True}, {},
                            dice_class=MemoryEfficientSoftDiceLoss)
    assert rank_local(squared) is squared and rank_local(nnunet) is nnunet
    assert squared.loss.ddp is False and nnunet.dc.ddp is False and squared.weight_factors == weights
