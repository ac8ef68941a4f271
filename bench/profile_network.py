"""Where a CPU training step of RAS U-Net spends its time and memory, against nnU-Net's default network from the same
plans (torch.profiler, one process per network, after a warm-up step): the operators with the most CPU time and the
most memory allocated, for the speed and memory work on the RAS block.

    python bench/profile_network.py [--dataset phantom|hippocampus] [--top 12]

Plans: nnU-Net's default ``nnUNetPlans`` (3d_fullres), made as ``bench/bench_network.py`` makes them.
"""
import argparse
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def profile(plans_file: str, dataset_json: str, network: str, top: int) -> None:
    from torch.profiler import ProfilerActivity, profile as torch_profile
    from bench.bench_network import training_step

    _, _, config, step = training_step(plans_file, dataset_json, network)
    step()
    with torch_profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    print(f"\n## {network}: patch {list(config.patch_size)}, batch {config.batch_size}\n")
    print(prof.key_averages().table(sort_by='self_cpu_time_total', row_limit=top, max_name_column_width=40))
    print(prof.key_averages().table(sort_by='self_cpu_memory_usage', row_limit=6, max_name_column_width=40))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dataset', choices=['phantom', 'hippocampus'], default='phantom')
    parser.add_argument('--top', type=int, default=12)
    parser.add_argument('--plans', nargs=2, default=None, metavar=('PLANS_JSON', 'DATASET_JSON'),
                        help='profile these plans instead of making them')
    args = parser.parse_args()
    if args.plans:
        plans_file, dataset_json = args.plans
    else:
        from bench.bench_network import _plans
        work = tempfile.mkdtemp(prefix='profile_network_')
        chosen = [p for p in _plans(work) if ('Hippocampus' if args.dataset == 'hippocampus' else 'Liver phantom, '
                                                                                                   'nnUNetPlans') in p[0]]
        _, plans_file, dataset_json = chosen[0]
    for network in ('nnU-Net default', 'RAS U-Net'):
        code = (f'import sys; sys.path.insert(0, {ROOT!r}); from bench.profile_network import profile; '
                f'profile({plans_file!r}, {dataset_json!r}, {network!r}, {args.top})')
        subprocess.run([sys.executable, '-c', code], check=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
