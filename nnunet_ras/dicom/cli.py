"""The DICOM subcommands of ``nnunet-ras``: dicom-info, dicom-to-dataset, predict, dicom-phantom."""
import argparse
import os

from nnunet_ras.dicom import DicomError


def _dicom_info(args) -> int:
    from nnunet_ras.dicom.rtstruct import read_rtstruct, referenced_series_uids
    from nnunet_ras.dicom.series import load_series, scan_folder
    found = scan_folder(args.i)
    problems = 0
    for uid in found.ct_series:
        try:
            series = load_series(found, uid)
        except DicomError as e:
            print(f"REFUSED {e}")
            problems += 1
            continue
        print(f"CT      {series.describe()}\n        patient {series.patient_id!r}, study {series.study_uid}, "
              f"frame of reference {series.frame_of_reference_uid}")
        for warning in series.warnings:
            print(f"        warning: {warning}")
        for path, header in found.rtstructs:
            if uid in referenced_series_uids(header) or len(found.ct_series) == 1:
                try:
                    structures = read_rtstruct(path, series, args.allow_partial_series)
                except DicomError as e:
                    print(f"REFUSED {e}")
                    problems += 1
                    continue
                print(f"RTSTRUCT {path}")
                for roi in structures.rois:
                    print(f"        {roi.number:3d} {roi.name!r:24s} {roi.interpreted_type or '-':10s} "
                          f"{roi.contours_on_series}/{roi.contours} contours on this CT, {int(roi.mask.sum())} voxels")
                for warning in structures.warnings:
                    print(f"        warning: {warning}")
    for path, modality in found.other:
        print(f"ignored {path} (modality {modality})")
    return 1 if problems else 0


def _dicom_to_dataset(args) -> int:
    from nnunetv2.paths import nnUNet_raw
    from nnunet_ras.dicom.convert import REPORT_NAME, convert_patients, parse_label_map
    if not (args.o or nnUNet_raw):
        raise DicomError("nnUNet_raw is not set: give the raw folder with -o or export nnUNet_raw")
    folder, reports = convert_patients(args.i, args.o or str(nnUNet_raw), args.d, args.name,
                                       parse_label_map(args.l), args.allow_partial_series, overwrite=args.overwrite)
    for report in reports:
        print(report.line())
        for warning in report.warnings:
            print(f"          warning: {warning}")
    converted = sum(r.status == 'converted' for r in reports)
    print(f"{converted} of {len(reports)} patient(s) converted into {folder} (report: {REPORT_NAME})")
    return 0


def model_folders(args) -> list:
    """The model folder(s) that ``add_model_arguments``' options name: -m as given, or -d/-tr/-p/-c resolved."""
    if args.m:
        return args.m
    if args.d is None:
        raise DicomError("give the model as -m MODEL_FOLDER [MODEL_FOLDER ...] or as -d DATASET [-tr -c -p]")
    from nnunetv2.utilities.file_path_utilities import get_output_folder
    from nnunet_ras.dataset_ids import resolve_dataset
    return [get_output_folder(resolve_dataset(args.d), args.tr, args.p, args.c)]


def check_device(device: str) -> str:
    """Refuses a device this machine does not have, before anything is loaded."""
    import torch
    if device == 'cuda' and not torch.cuda.is_available():
        raise DicomError("-device cuda: no CUDA GPU is available on this machine; use -device cpu")
    if device == 'mps' and not (getattr(torch.backends, 'mps', None) and torch.backends.mps.is_available()):
        raise DicomError("-device mps: Apple MPS is not available on this machine; use -device cpu")
    return device


def _predict(args) -> int:
    from nnunet_ras.dicom.margins import parse_margin
    from nnunet_ras.dicom.postprocess import Cleanup, parse_min_island
    from nnunet_ras.dicom.predict import parse_pairs, parse_style, predict_case
    import torch
    device = check_device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    cleanup = Cleanup(args.postprocessing, parse_min_island(parse_pairs(args.min_island_cc, '--min_island_cc')),
                      args.fill_holes)
    report = predict_case(args.i, args.o, model_folders(args), args.f, args.chk, device,
                          not args.disable_tta, parse_style(args.roi_names, args.roi_colors, args.roi_types),
                          [parse_margin(m) for m in args.margin], args.series_uid, args.allow_missing_identity,
                          cleanup, args.overwrite, step_size=args.step_size, bf16=args.bf16,
                          torch_resampling=args.torch_resampling)
    for step in report['cleanup']:
        change = f"{step['removed_cc']:.2f} cc removed" if 'removed_cc' in step else f"{step['added_cc']:.2f} cc added"
        print(f"clean-up: {step['structure']}: {step['step']}: {change}")
    for name, cc in report['volumes_cc'].items():
        print(f"{name:24s} {cc:10.2f} cc")
    for warning in report['warnings']:
        print(f"warning: {warning}")
    print('\n'.join(report['files']))
    return 0


def _dicom_phantom(args) -> int:
    from nnunet_ras._io import atomic_folder
    from nnunet_ras.dicom.phantom import write_phantom_patients
    with atomic_folder(args.o, args.overwrite) as work:  # a new or empty folder, or --overwrite: never mixed
        folders = write_phantom_patients(work, args.n, args.seed, with_rtstruct=not args.ct_only)
    for folder in folders:
        print(os.path.join(args.o, os.path.basename(folder)))
    return 0


def _step_size(text: str) -> float:
    from nnunet_ras.dicom.predict import check_step_size
    try:
        return check_step_size(float(text))
    except (ValueError, DicomError) as e:
        raise argparse.ArgumentTypeError(str(e) if isinstance(e, DicomError) else f"{text!r} is not a number")


def add_model_arguments(p: argparse.ArgumentParser, default: str = '') -> None:
    """The options that name a trained model (read by ``model_folders``), as nnUNetv2_predict has them."""
    p.add_argument('-m', '--model', dest='m', nargs='+', default=None,
                   help='trained model folder(s) (Trainer__Plans__Configuration); several are ensembled' + default)
    p.add_argument('-d', default=None, help='dataset name or ID, instead of -m')
    p.add_argument('-tr', default='nnUNetTrainer', help='trainer (with -d)')
    p.add_argument('-c', default='3d_fullres', help='configuration (with -d)')
    p.add_argument('-p', default='nnUNetPlans', help='plans identifier (with -d)')
    p.add_argument('-f', nargs='+', default=None, help='folds (default: all trained folds)')
    p.add_argument('-chk', default='checkpoint_final.pth', help='checkpoint name')
    p.add_argument('--disable_tta', action='store_true',
                   help='no mirroring at test time: 8 x fewer network evaluations in 3D (4 x in 2D), slightly '
                        'worse contours')
    from nnunet_ras.dicom.predict import DEFAULT_STEP_SIZE
    p.add_argument('-step_size', type=_step_size, default=DEFAULT_STEP_SIZE,
                   help="sliding-window step as a fraction of the patch, as nnUNetv2_predict's (default 0.5: tiles "
                        "overlap by half; 1: no overlap, up to 8 x fewer tiles in 3D, less smoothing at tile borders)")
    p.add_argument('--bf16', action='store_true',
                   help='CPU only: run the network in bfloat16 (torch.autocast), about 2 x faster on a CPU with '
                        'AVX512-BF16 or AMX (refused on one without: emulated bfloat16 is slower than float32); '
                        "labels differ from float32's at a few boundary voxels (README: measured Dice change)")
    p.add_argument('--torch_resampling', action='store_true',
                   help="resample the network's output back to the CT with nnU-Net's torch resampling (that of its "
                        "*_torchres planners) instead of the plans' scikit-image one: about 10 x faster for a "
                        "full-size CT; the network's input is unchanged (plans from nnUNetPlannerRAS resample with torch already)")


def add_dicom_commands(subparsers) -> None:
    """Registers the DICOM subcommands on ``nnunet-ras``'s subparsers."""
    p = subparsers.add_parser('dicom-info', help='list the CT series and RTSTRUCTs of a DICOM folder, with the '
                                                 'geometry checks and ROIs')
    p.add_argument('-i', required=True, help='folder with DICOM files (searched recursively)')
    p.add_argument('--allow_partial_series', action='store_true',
                   help='import contours on the slices present when some referenced slices are missing')
    p.set_defaults(func=_dicom_info)

    p = subparsers.add_parser('dicom-to-dataset', help='DICOM patients (CT + RTSTRUCT) -> nnU-Net raw data set',
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog='example: nnunet-ras dicom-to-dataset -i patients/ -d 600 -name LiverGTV '
                                     '-l liver=Liver,LIVER gtv=GTV,gtv_1')
    p.add_argument('-i', required=True, help='folder with one sub-folder per patient')
    p.add_argument('-d', type=int, required=True, help='dataset ID')
    p.add_argument('-name', required=True, help='dataset name (DatasetXXX_<name>)')
    p.add_argument('-l', nargs='+', required=True, metavar='LABEL=ROI[,ROI...]',
                   help='labels in order (1, 2, ...; later ones are painted over earlier ones) with the ROI names '
                        'that mean them, matched ignoring case')
    p.add_argument('-o', default=None, help='raw folder (default: $nnUNet_raw)')
    p.add_argument('--allow_partial_series', action='store_true',
                   help='convert patients whose RTSTRUCT has contours on slices missing from the CT (they are '
                        'left out); by default such patients are skipped')
    p.add_argument('--overwrite', action='store_true',
                   help='replace an existing data set of this id and name whole (by default a run into it adds new '
                        'patients, only when the labels are the same, and skips patients already in it)')
    p.set_defaults(func=_dicom_to_dataset)

    p = subparsers.add_parser('predict', help='trained model(s) on a NIfTI or DICOM CT -> NIfTI (+ RTSTRUCT and '
                                              'DICOM SEG for DICOM input), with margins and volumes')
    p.add_argument('-i', required=True, help='a NIfTI file, or a folder with the DICOM CT series')
    p.add_argument('-o', required=True, help='output folder; must be new or empty (see --overwrite)')
    p.add_argument('--overwrite', action='store_true', help='replace a non-empty output folder whole')
    add_model_arguments(p)
    p.add_argument('-device', default=None, choices=['cuda', 'cpu', 'mps'],
                   help='default: cuda if available. On a CPU, nnU-Net runs the sliding window on at most '
                        '$nnUNet_def_n_proc threads: leave it unset (8) or at least the number of cores')
    p.add_argument('--series_uid', default=None, help='the CT series to use when the folder holds several')
    p.add_argument('--roi_names', nargs='+', default=[], metavar='LABEL=ROI',
                   help="ROI names for the model's labels (default: the label names), e.g. tumour=GTV")
    p.add_argument('--roi_colors', nargs='+', default=[], metavar='ROI=R,G,B', help='e.g. GTV=255,0,0')
    p.add_argument('--roi_types', nargs='+', default=[], metavar='ROI=TYPE',
                   help='RTROIInterpretedType (GTV, CTV, PTV, ORGAN, EXTERNAL, AVOIDANCE, ...); default: GTV/CTV/PTV '
                        'from the name, else ORGAN')
    p.add_argument('--margin', nargs='+', default=[], metavar='NEW=SOURCE+MM[@CONFINE]',
                   help='margin structures in order, e.g. CTV=GTV+10@liver PTV=CTV+5,5,7 (mm along x,y,z)')
    p.add_argument('--allow_missing_identity', action='store_true',
                   help='write RTSTRUCT/SEG for a de-identified CT with empty study/series/patient IDs (copied empty)')
    p.add_argument('--postprocessing', default='auto', metavar='auto|none|FILE',
                   help="nnU-Net's postprocessing.pkl (from nnUNetv2_find_best_configuration); auto: the model "
                        "folder's own (or its crossval_results_folds_<folds>/) if it has one; applied before margins")
    p.add_argument('--min_island_cc', nargs='+', default=[], metavar='ROI=CC',
                   help='remove 3D islands smaller than CC of a predicted structure (its largest part always stays), '
                        'e.g. Liver=1 GTV=0.05; default: none removed')
    p.add_argument('--fill_holes', nargs='+', default=[], metavar='ROI',
                   help='fill holes of these predicted structures slice by slice (only background is filled); '
                        'default: none')
    p.set_defaults(func=_predict)

    p = subparsers.add_parser('dicom-phantom', help='write synthetic DICOM patients (CT series + RTSTRUCT with '
                                                    'liver and GTV) to try the DICOM workflow')
    p.add_argument('-o', required=True, help='output folder (one sub-folder per patient)')
    p.add_argument('-n', type=int, default=8, help='number of patients')
    p.add_argument('-seed', type=int, default=0)
    p.add_argument('--ct_only', action='store_true', help='no RTSTRUCT (new patients to predict on)')
    p.add_argument('--overwrite', action='store_true', help='replace a non-empty -o folder whole')
    p.set_defaults(func=_dicom_phantom)

