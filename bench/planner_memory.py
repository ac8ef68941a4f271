"""Does a RAS plan use the memory that nnU-Net's default plan uses at the same budget? One training step (forward,
backward, SGD step; CPU, all cores) of each network under its own planner's plans for a full-size abdominal CT, where
the memory target, not the image, bounds the patch: nnU-Net's default network under ``nnUNetPlans``
(``ExperimentPlanner``) against RAS U-Net under ``nnUNetRASPlans`` (``nnUNetPlannerRAS``, whose reference value is
calibrated by ``RAS_REFERENCE_CALIBRATION``), both at nnU-Net's default target of 8 GB.

The CT, its data set and both plans are those of ``bench/full_ct_inference.py`` (made here if missing). Peak memory
is measured as in ``bench/bench_network.py``: the peak resident size during the steps minus the size before them,
and the tensor peak (the bytes PyTorch's tensors hold at most during one step), each network in a fresh process with
glibc's allocator as it is. The quotient of the planner's estimates and of the measured memory is the calibration
that gives both plans the same memory. Resumable: a measured network is kept in ``--out`` (``--force`` to redo).

    python bench/planner_memory.py [--iterations 1]
"""
import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.bench_network import _measure_in_subprocess  # noqa: E402
from bench.full_ct_inference import DATASET, make_data, model_folders  # noqa: E402
from nnunet_ras._io import write_json_atomically  # noqa: E402
from nnunet_ras.planning.planner import RAS_REFERENCE_CALIBRATION  # noqa: E402

PAIRS = [('nnU-Net default', 'nnUNetPlans', 'default'), ('RAS U-Net', 'nnUNetRASPlans', 'RAS_own_plans')]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--iterations', type=int, default=1, help='timed training steps per network')
    parser.add_argument('--work', default=os.path.join(ROOT, 'bench', 'results', 'full_ct_inference', 'work'),
                        help="bench/full_ct_inference.py's work folder (data set and plans)")
    parser.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results', 'planner_memory'))
    parser.add_argument('--force', action='store_true')
    args = parser.parse_args()
    make_data(args.work, 2.5)
    model_folders(args.work, [run for _, _, run in PAIRS])  # makes both plans
    dataset_json = os.path.join(args.work, 'raw', DATASET, 'dataset.json')
    os.makedirs(args.out, exist_ok=True)
    rows = {}
    for network, plans, _ in PAIRS:
        result_file = os.path.join(args.out, f'{plans}.json')
        if not os.path.isfile(result_file) or args.force:
            plans_file = os.path.join(args.work, 'preprocessed', DATASET, f'{plans}.json')
            write_json_atomically(result_file, _measure_in_subprocess(plans_file, dataset_json, network,
                                                                      args.iterations, 'glibc'))
        with open(result_file) as f:
            rows[network] = {**json.load(f), 'plans': plans}
    print(f"\nFull-size CT data set (512 x 512 x 134, 0.72 x 0.59 x 2.5 mm), one training step, {os.cpu_count()} CPU "
          f"threads, float32\n")
    print('| network, plans | spacing of the plans | patch x batch | voxels per step | s / step | peak memory MB | '
          'tensor peak MB | planner estimate |')
    print('|---|---|---|---|---|---|---|---|')
    for network, r in rows.items():
        with open(os.path.join(args.work, 'preprocessed', DATASET, r['plans'] + '.json')) as f:
            spacing = json.load(f)['configurations']['3d_fullres']['spacing']
        voxels = r['batch_size'] * int(np.prod(r['patch_size']))
        print(f"| {network}, {r['plans']} | {' x '.join(f'{s:.2f}' for s in spacing)} | "
              f"{'x'.join(map(str, r['patch_size']))} x {r['batch_size']} | {voxels / 1e6:.2f} M | "
              f"{r['seconds_per_iteration']:.1f} | {r['peak_rss_mb']:.0f} | {r['tensor_peak_mb']:.0f} | "
              f"{r['planner_estimate']} |")
    ras, default = rows['RAS U-Net'], rows['nnU-Net default']
    estimate = ras['planner_estimate'] / default['planner_estimate']
    for measure in ('peak_rss_mb', 'tensor_peak_mb'):
        memory = ras[measure] / default[measure]
        # a RAS estimate unit costs (memory / estimate) default units: reference values scaled by estimate / memory
        # let a RAS plan take the default plan's memory
        print(f"\nRAS / default by {measure}: memory {memory:.2f}x at a planner estimate {estimate:.2f}x; the "
              f"calibration giving both plans the same memory: {estimate:.2f} / {memory:.2f} = "
              f"{estimate / memory:.2f} (RAS_REFERENCE_CALIBRATION is {RAS_REFERENCE_CALIBRATION})")
    return 0


if __name__ == '__main__':
    sys.exit(main())
