"""``nnunet-ras evaluate`` and ``nnunet-ras compare``: metrics of a prediction folder, and trainers side by side."""
import os

from batchgenerators.utilities.file_and_folder_operations import load_json

from nnunet_ras.dataset_checks import DatasetError


def _evaluate(args) -> int:
    from nnunet_ras.evaluation.evaluate import (evaluate_folder, summary_text, targets_from_dataset_json,
                                                write_evaluation)
    from nnunet_ras._io import check_output_file, declared_label_values
    targets, ignore_label, file_ending, declared = None, None, args.file_ending, None
    json_path = args.o or os.path.join(args.pred, 'metrics.json')
    csv_path = args.csv or os.path.join(args.pred, 'metrics.csv')
    for path, what in ((json_path, 'the summary JSON, -o'), (csv_path, 'the per-case CSV, --csv')):
        check_output_file(path, what)
    if args.djfile:
        try:
            dataset_json = load_json(args.djfile)
        except (OSError, ValueError) as e:
            raise DatasetError(f"{args.djfile}: not a readable JSON file ({e})") from None
        if 'labels' not in dataset_json:
            raise DatasetError(f"{args.djfile}: has no 'labels'")
        if not isinstance(dataset_json, dict) or not isinstance(dataset_json.get('labels'), dict):
            raise DatasetError(f"{args.djfile}: 'labels' must be an object such as {{\"background\": 0, ...}}")
        try:
            declared = declared_label_values(dataset_json['labels'])
            targets, ignore_label = targets_from_dataset_json(dataset_json, args.l)
        except (TypeError, ValueError) as e:
            raise DatasetError(f"{args.djfile}: malformed 'labels' ({e})") from None
        file_ending = file_ending or dataset_json.get('file_ending')
    elif args.l:
        targets = {f'label_{v}': v for v in args.l}
    evaluation = evaluate_folder(args.ref, args.pred, file_ending or '.nii.gz', targets, ignore_label,
                                 declared=declared)
    write_evaluation(evaluation, json_path, csv_path)
    print(summary_text(evaluation))
    print(f"{len(evaluation['cases'])} cases; written: {json_path}, {csv_path}")
    return 0


def _compare(args) -> int:
    from nnunet_ras.evaluation.compare import compare_trainers
    print(compare_trainers(args.d, args.c, args.tr, args.o, args.p, args.f, args.ref_trainer))
    print(f"written to {os.path.abspath(args.o)}: comparison.md, comparison.csv, cases.csv, boxplot_<metric>.png")
    return 0


def add_evaluation_commands(subparsers) -> None:
    p = subparsers.add_parser('evaluate', help='DSC, ASSD, HD95, RVE, precision, recall of a folder of predictions '
                                               'against a folder of references (JSON + CSV)')
    p.add_argument('-ref', required=True, help='folder of reference segmentations')
    p.add_argument('-pred', required=True, help='folder of predicted segmentations (same file names)')
    p.add_argument('-l', nargs='+', type=int, default=None,
                   help='label values to evaluate (default: those of -djfile, else every value found)')
    p.add_argument('-djfile', default=None, help="dataset.json: label names, regions, ignore label, file_ending")
    p.add_argument('-file_ending', default=None, help='default: dataset.json\'s, else .nii.gz')
    p.add_argument('-o', default=None, help='summary JSON (default: PRED/metrics.json)')
    p.add_argument('--csv', default=None, help='per-case CSV (default: PRED/metrics.csv)')
    p.set_defaults(func=_evaluate)

    p = subparsers.add_parser('compare', help="several trainers' cross-validation results side by side: table "
                                              "(Markdown, CSV), paired tests, box plots")
    p.add_argument('-d', required=True, help='dataset name or ID')
    p.add_argument('-c', required=True, help='configuration, e.g. 3d_fullres')
    p.add_argument('-tr', nargs='+', required=True, help='trainers to compare')
    p.add_argument('-p', default='nnUNetPlans', help='plans identifier')
    p.add_argument('-f', nargs='+', type=int, default=[0, 1, 2, 3, 4], help='folds')
    p.add_argument('-ref_trainer', default=None, help='trainer the others are tested against (default: first -tr)')
    p.add_argument('-o', required=True, help='output folder')
    p.set_defaults(func=_compare)
