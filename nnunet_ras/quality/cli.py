"""The ``nnunet-ras quality`` subcommand: score contours with the QAM of a model trained with a QAM trainer."""
import argparse


def _quality(args) -> int:
    import torch
    from nnunet_ras.dataset_checks import DatasetError
    from nnunet_ras.quality.scoring import SCORES_NAME, score_folder
    if args.device == 'cuda' and not torch.cuda.is_available():
        raise DatasetError("-device cuda: no CUDA GPU is available on this machine; use -device cpu")
    rows = score_folder(args.i, args.s, args.m, args.f, args.chk, args.o, torch.device(args.device))
    for row in rows:
        print(f"{row['rank']:4d}  {row['score']:+.4f}  {row['case']}")
    print(f"{SCORES_NAME}.csv/.json written to {args.o or args.s} (lowest score first: review those first)")
    return 0


def add_quality_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser('quality', help="score segmentations with the quality assessment module (QAM) of a "
                                              "model trained with a QAM trainer; lowest score = review first")
    p.add_argument('-i', required=True, help='images folder (<case>_0000<file_ending>, as for nnUNetv2_predict)')
    p.add_argument('-s', required=True, help='segmentations folder (<case><file_ending>), e.g. a prediction')
    p.add_argument('-m', required=True, help='model folder (<trainer>__<plans>__<configuration>)')
    p.add_argument('-f', default='0', help='fold whose checkpoint holds the QAM (default 0; "all" for fold_all)')
    p.add_argument('-chk', default='checkpoint_final.pth', help='checkpoint file name')
    p.add_argument('-o', default=None, help='output folder for quality_scores.csv/.json (default: the -s folder)')
    p.add_argument('-device', default='cpu', choices=['cpu', 'cuda'], help='device (default cpu)')
    p.set_defaults(func=_quality)
