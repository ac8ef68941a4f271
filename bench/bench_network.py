"""RAS U-Net against nnU-Net's default network built from the same plans: parameters, MACs per patch, CPU
forward+backward time per training iteration and peak memory, measured side by side in one run.

    python bench/bench_network.py [--repeats 3] [--iterations 3] [--allocators glibc kept]
                                  [--out bench/results/network.json]

Plans: nnU-Net's default ``nnUNetPlans`` (3d_fullres) of ../shared/data/Dataset004_Hippocampus and of the
synthetic liver phantom (also with the RAS planner's own plans). Each measurement runs in a fresh process. Peak
memory is the peak resident size during the steps (a warm-up step and the timed ones) minus the resident size
before the first (network and data already allocated; the optimiser's momentum is made by the first step). The
tensor peak is the peak of the bytes PyTorch's tensors hold during one more step (``tensor_peak_mb``): the
computation's own need, which neither CPU contention nor the allocator's history changes.
``--allocators``: ``glibc`` measures both networks with the C library's defaults (how nnU-Net's own trainers run),
``kept`` with freed memory kept for reuse (``nnunet_ras.cpu_memory.keep_freed_memory``, what the plugin's
trainers switch on for CPU training); the ratios compare the networks under the same setting. The two networks
alternate A B A B ... so that machine noise hits both alike.
The loss is the mean square of the logits: its gradient is dense and has the logits' layout, like a real loss's (a
plain mean's gradient is a broadcast scalar, which no segmentation loss gives).

The last table compares what nnU-Net's planner estimates for each network (``static_estimate_VRAM_usage``, per
sample at the same patch) with the memory it measures here: their ratio is the factor by which the RAS planner's
reference value is calibrated (``nnunet_ras.planning.planner``), as nnU-Net calibrates its residual-encoder planners.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), 'shared', 'data')


def _plans(workdir: str):
    """Plans files of the benchmark data sets, made with nnU-Net's planners in a scratch folder."""
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprint_dataset, \
        plan_experiment_dataset
    from nnunet_ras.phantom import write_phantom_dataset
    from nnunet_ras.planning import nnUNetPlannerRAS

    phantom_raw = os.path.join(workdir, 'raw')
    write_phantom_dataset(phantom_raw, 501, num_train=8, num_test=0)
    setups = [('Hippocampus', SHARED_DATA, 4, 'Dataset004_Hippocampus'),
              ('Liver phantom', phantom_raw, 501, 'Dataset501_LiverPhantom')]
    plans = []
    for name, raw, dataset_id, folder in setups:
        os.environ['nnUNet_raw'] = raw
        os.environ['nnUNet_preprocessed'] = os.path.join(workdir, 'preprocessed')
        extract_fingerprint_dataset(dataset_id, num_processes=2, clean=False, verbose=False,
                                    show_progress_bar=False)
        plan_experiment_dataset(dataset_id, ExperimentPlanner)
        plans.append((f'{name}, nnUNetPlans', os.path.join(workdir, 'preprocessed', folder, 'nnUNetPlans.json'),
                      os.path.join(raw, folder, 'dataset.json')))
        if name == 'Liver phantom':
            plan_experiment_dataset(dataset_id, nnUNetPlannerRAS)
            plans.append((f'{name}, nnUNetRASPlans', os.path.join(workdir, 'preprocessed', folder,
                                                                   'nnUNetRASPlans.json'),
                          os.path.join(raw, folder, 'dataset.json')))
    return plans


def _status_kb(field: str) -> int:
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ':'))


def _reset_peak_rss() -> int:
    """Resets the kernel's peak-RSS mark (Linux) and returns the resident size now, in kB: the peak of what follows
    minus this is the memory one training step takes beyond the network, its optimiser state and the data."""
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
    return _status_kb('VmRSS')


def training_step(plans_file: str, dataset_json: str, network: str):
    """(network, batch, configuration, step): ``network`` built from the plans as its trainer builds it, a random
    batch of the plans' patch and batch size, and one forward + backward + SGD step on it (CPU, all cores)."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunet_ras.training import nnUNetTrainerRAS

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    plans = PlansManager(load_json(plans_file))
    config = plans.get_configuration('3d_fullres')
    labels = plans.get_label_manager(load_json(dataset_json))
    channels = len(load_json(dataset_json)['channel_names'])
    trainer = nnUNetTrainerRAS if network == 'RAS U-Net' else nnUNetTrainer
    if network != 'RAS U-Net' and 'RASUNet' in config.network_arch_class_name:
        raise ValueError('the default network is measured on default plans only')
    net = trainer.build_network_architecture(plans, config, channels, labels.num_segmentation_heads, True)
    x = torch.randn(config.batch_size, channels, *config.patch_size)
    optimizer = torch.optim.SGD(net.parameters(), 1e-2, momentum=0.99, nesterov=True)

    def step():
        outputs = net(x)
        sum(o.float().square().mean() for o in outputs).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return net, x, config, step


def tensor_peak_mb(step) -> float:
    """The peak of the bytes held by PyTorch's tensors during one ``step``, from the profiler's allocation events:
    what the network's computation needs, whatever the C library's allocator keeps or returns (the resident-size
    peak includes that, and varies with the allocator's history)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.nbytes())
    held = peak = 0
    for _, nbytes in events:
        held += nbytes
        peak = max(peak, held)
    return peak / 2 ** 20


def measure(plans_file: str, dataset_json: str, network: str, iterations: int, allocator: str = 'glibc') -> dict:
    """Runs in a fresh process: builds one network from the plans, times forward+backward+step on CPU."""
    from nnunet_ras.cpu_memory import keep_freed_memory
    if allocator == 'kept' and not keep_freed_memory():
        raise RuntimeError('freed memory cannot be kept here (not glibc, or nnUNet_ras_keep_cpu_memory=0)')
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    from torch.utils.flop_counter import FlopCounterMode
    from nnunet_ras.planning import nnUNetPlannerRAS

    net, x, config, step = training_step(plans_file, dataset_json, network)
    with FlopCounterMode(display=False) as counter:
        net(x[:1])
    macs_per_patch = counter.get_total_flops() / 2

    rss_baseline = _reset_peak_rss()
    step()  # warm-up (allocator, kernel selection)
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    tensor_peak = tensor_peak_mb(step)
    planner = nnUNetPlannerRAS if network == 'RAS U-Net' else ExperimentPlanner
    estimate = planner.static_estimate_VRAM_usage(tuple(config.patch_size), x.shape[1], 1, config.network_arch_class_name,
                                                  config.network_arch_init_kwargs,
                                                  config.network_arch_init_kwargs_req_import)
    return {'params': sum(p.numel() for p in net.parameters()), 'macs_per_patch': macs_per_patch,
            'planner_estimate': int(estimate),
            'seconds_per_iteration': float(np.median(times)),
            'peak_rss_mb': (_status_kb('VmHWM') - rss_baseline) / 1024, 'tensor_peak_mb': tensor_peak,
            'patch_size': list(config.patch_size), 'batch_size': config.batch_size, 'allocator': allocator}


def _measure_in_subprocess(plans_file, dataset_json, network, iterations, allocator):
    code = ('import json, sys; sys.path.insert(0, {root!r}); from bench.bench_network import measure; '
            'print(json.dumps(measure({p!r}, {d!r}, {n!r}, {i}, {a!r})))').format(
        root=ROOT, p=plans_file, d=dataset_json, n=network, i=iterations, a=allocator)
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--repeats', type=int, default=3, help='alternating rounds per network')
    parser.add_argument('--iterations', type=int, default=3, help='timed iterations per round')
    parser.add_argument('--allocators', nargs='+', choices=['glibc', 'kept'], default=['glibc', 'kept'])
    parser.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results', 'network.json'))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name, plans_file, dataset_json in _plans(workdir):
            networks = ['RAS U-Net'] if 'RASPlans' in name else ['nnU-Net default', 'RAS U-Net']
            runs = {(a, n): [] for a in args.allocators for n in networks}
            for _ in range(args.repeats):
                for a, n in runs:
                    runs[a, n].append(_measure_in_subprocess(plans_file, dataset_json, n, args.iterations, a))
            for (a, n), measured in runs.items():
                result = dict(measured[0])
                result['seconds_per_iteration'] = float(np.median([r['seconds_per_iteration'] for r in measured]))
                result['peak_rss_mb'] = float(np.median([r['peak_rss_mb'] for r in measured]))
                result['tensor_peak_mb'] = float(np.median([r['tensor_peak_mb'] for r in measured]))
                rows.append({'plans': name, 'network': n, **result})
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, 'w') as f:
        json.dump(rows, f, indent=2)
    print(f"\nCPU: {os.cpu_count()} threads, torch forward+backward+SGD step, median of {args.repeats} alternating "
          f"rounds x {args.iterations} iterations\n")
    print('| plans | allocator | network | patch x batch | parameters | GMACs / patch | s / iteration | peak memory MB |'
          ' tensor peak MB | params vs default | time vs default | memory vs default | tensor peak vs default |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|---|')
    for row in rows:
        default = _default_row(rows, row)
        ratio = (f"{row['params'] / default['params']:.2f}x",
                 f"{row['seconds_per_iteration'] / default['seconds_per_iteration']:.2f}x",
                 f"{row['peak_rss_mb'] / default['peak_rss_mb']:.2f}x",
                 f"{row['tensor_peak_mb'] / default['tensor_peak_mb']:.2f}x") if default else ('-',) * 4
        print(f"| {row['plans']} | {row['allocator']} | {row['network']} | "
              f"{'x'.join(map(str, row['patch_size']))} x {row['batch_size']} | "
              f"{row['params'] / 1e6:.2f} M | {row['macs_per_patch'] / 1e9:.1f} | {row['seconds_per_iteration']:.2f} | "
              f"{row['peak_rss_mb']:.0f} | {row['tensor_peak_mb']:.0f} | {' | '.join(ratio)} |")
    print('\nPlanner estimate against measured memory, RAS U-Net / nnU-Net default at the same plans:\n')
    print('| plans | allocator | estimate ratio | memory ratio | calibration (estimate / memory) |')
    print('|---|---|---|---|---|')
    for row in rows:
        default = _default_row(rows, row)
        if row['network'] == 'RAS U-Net' and default:
            estimate, memory = (row['planner_estimate'] / default['planner_estimate'],
                                row['peak_rss_mb'] / default['peak_rss_mb'])
            print(f"| {row['plans']} | {row['allocator']} | {estimate:.2f} | {memory:.2f} | {estimate / memory:.2f} |")


def _default_row(rows, row):
    """nnU-Net's default network measured with the same plans and allocator setting as ``row``, if any."""
    return next((r for r in rows if r['plans'] == row['plans'] and r['allocator'] == row['allocator']
                 and r['network'] == 'nnU-Net default'), None)


if __name__ == '__main__':
    main()
