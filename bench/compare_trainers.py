"""Every baseline, ablation and loss trainer on the same fold of Hippocampus with the same schedule, compared the
papers' way (DSC, ASSD, HD95, RVE, precision, recall, parameters, s/epoch, paired Wilcoxon against the 3D U-Net).

    python bench/compare_trainers.py [--trainers ...] [--folds 0] [--workdir bench/results/compare_trainers]

Stock commands only: light plans (bench/common.py; 3d_fullres, batch 4), ``nnUNetv2_train`` on the BENCH
schedule for each trainer (nnU-Net's own validation predictions of the fold are what is compared),
``nnUNetTrainerRAS_LRDEHL`` fine-tuned from the RAS checkpoint with ``-pretrained_weights``, then
``nnunet-ras compare``. Finished folds are skipped on a re-run.
"""
import argparse
import os

from common import ROOT, SHARED_DATA, Workspace, make_bench_plans, model_folder
from nnunet_ras_bench_trainers import BENCH, FINE_TUNE

SCHEDULE = f'{BENCH[0]}epochs_{BENCH[1]}iters'
TRAINERS = ['nnUNetTrainer', 'nnUNetTrainerRAS', 'nnUNetTrainerSEUNet', 'nnUNetTrainerResSEUNet', 'nnUNetTrainerVNet',
            'nnUNetTrainerHybrid25D', 'nnUNetTrainerRAS_NoAttention', 'nnUNetTrainerRAS_NoSeparable',
            'nnUNetTrainerRAS_NoDropout', 'nnUNetTrainerRAS_SquaredDice']
FINE_TUNED = f'nnUNetTrainerRAS_LRDEHL_{FINE_TUNE[0]}epochs_{FINE_TUNE[1]}iters'
PLANS, CONFIGURATION, DATASET = 'nnUNetBenchPlans', '3d_fullres', 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--trainers', nargs='+', default=TRAINERS, help='trainers (the first is the reference)')
    parser.add_argument('--folds', nargs='+', default=['0'])
    parser.add_argument('--no_lrdehl', action='store_true', help='skip the LRDEHL fine-tuning of the RAS model')
    parser.add_argument('--workdir', default=os.path.join(ROOT, 'bench', 'results', 'compare_trainers'))
    args = parser.parse_args()
    ws = Workspace(args.workdir)
    link = ws.path('nnUNet_raw', 'Dataset004_Hippocampus')
    if not os.path.exists(link):
        os.symlink(os.path.join(SHARED_DATA, 'Dataset004_Hippocampus'), link)
    if not os.path.isdir(ws.path('nnUNet_preprocessed', 'Dataset004_Hippocampus', f'{PLANS}_{CONFIGURATION}')):
        make_bench_plans(ws, DATASET, CONFIGURATION, batch_size=4)

    trainers = [f'{t}_{SCHEDULE}' for t in args.trainers]
    for fold in args.folds:
        for trainer in trainers:
            done = os.path.join(model_folder(ws, DATASET, trainer, PLANS, CONFIGURATION), f'fold_{fold}',
                                'checkpoint_final.pth')
            if not os.path.isfile(done):
                seconds = ws.run(['nnUNetv2_train', str(DATASET), CONFIGURATION, fold, '-tr', trainer, '-p', PLANS,
                                  '-device', 'cpu'])
                print(f'{trainer} fold {fold}: {seconds:.0f} s', flush=True)
        ras = os.path.join(model_folder(ws, DATASET, f'nnUNetTrainerRAS_{SCHEDULE}', PLANS, CONFIGURATION),
                           f'fold_{fold}', 'checkpoint_final.pth')
        fine_tuned = os.path.join(model_folder(ws, DATASET, FINE_TUNED, PLANS, CONFIGURATION), f'fold_{fold}',
                                  'checkpoint_final.pth')
        if not args.no_lrdehl and os.path.isfile(ras) and not os.path.isfile(fine_tuned):
            seconds = ws.run(['nnUNetv2_train', str(DATASET), CONFIGURATION, fold, '-tr', FINE_TUNED, '-p', PLANS,
                              '-device', 'cpu', '-pretrained_weights', ras])
            print(f'{FINE_TUNED} fold {fold}: {seconds:.0f} s', flush=True)
    if not args.no_lrdehl:
        trainers.append(FINE_TUNED)
    ws.run(['nnunet-ras', 'compare', '-d', str(DATASET), '-c', CONFIGURATION, '-tr', *trainers, '-p', PLANS,
            '-f', *args.folds, '-ref_trainer', trainers[0], '-o', os.path.join(args.workdir, 'comparison')])
    with open(os.path.join(args.workdir, 'comparison', 'comparison.md')) as f:
        print(f.read())


if __name__ == '__main__':
    main()
