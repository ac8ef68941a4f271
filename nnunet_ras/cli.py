"""``nnunet-ras``: the plugin's command line, in nnU-Net's style (``-d``, ``-c``, ``-np`` ...)."""
import argparse
import sys
from typing import List, Optional


def _check(args) -> int:
    from nnunet_ras.installation import check_installation
    findings = check_installation()
    for f in findings:
        if f.problem is None:
            print(f"ok    {f.what}")
        else:
            print(f"FAIL  {f.problem}\n      fix: {f.fix}")
    failed = sum(f.problem is not None for f in findings)
    print("installation OK" if not failed else f"{failed} problem(s) found")
    return 1 if failed else 0


def _trainer_path(args) -> int:
    from nnunet_ras.installation import trainer_path
    print(trainer_path())
    return 0


def _plan_and_preprocess(args) -> int:
    from nnunet_ras.planning.preprocessing import plan_and_preprocess
    np_per_config = args.np if args.np is not None else [{'2d': 8, '3d_lowres': 8}.get(c, 4) for c in args.c]
    for d in args.d:
        plan_and_preprocess(d, args.c, np_per_config, args.npfp, args.gpu_memory_target,
                            args.overwrite_target_spacing, args.overwrite_plans_name, args.base_features,
                            args.verify_dataset_integrity, args.clean, args.no_pp, args.verbose, not args.no_pbar)
    return 0


def _phantom(args) -> int:
    from nnunetv2.paths import nnUNet_raw
    from nnunet_ras.phantom import write_phantom_dataset
    folder = write_phantom_dataset(args.o or str(nnUNet_raw), args.d, args.name, args.n, args.t, args.seed)
    print(folder)
    return 0


def _demo(args) -> int:
    from nnunet_ras.demo import run_demo
    return run_demo(args.workdir, args.d, args.tr, args.min_dice)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='nnunet-ras', description=__doc__)
    sub = parser.add_subparsers(dest='command', required=True)

    p = sub.add_parser('check', help='check the installation: nnU-Net folders, trainer lookup, torch/torchvision')
    p.set_defaults(func=_check)

    p = sub.add_parser('trainer-path', help='print the folder to put into nnUNet_extTrainer')
    p.set_defaults(func=_trainer_path)

    p = sub.add_parser('plan_and_preprocess', help="nnUNetv2_plan_and_preprocess with the RAS planner "
                                                   "(writes the plans 'nnUNetRASPlans')")
    p.add_argument('-d', nargs='+', type=int, required=True, help='dataset IDs')
    p.add_argument('-c', nargs='+', default=['2d', '3d_fullres', '3d_lowres'], help='configurations to preprocess')
    p.add_argument('-np', nargs='+', type=int, default=None, help='processes per configuration')
    p.add_argument('-npfp', type=int, default=8, help='processes for fingerprint extraction')
    p.add_argument('-gpu_memory_target', type=float, default=None, help='memory budget in GB (default 8)')
    p.add_argument('-overwrite_target_spacing', nargs='+', type=float, default=None,
                   help='target spacing for 3d_fullres in the transposed (slice axis first) order')
    p.add_argument('-overwrite_plans_name', default='nnUNetRASPlans', help='plans identifier')
    p.add_argument('-base_features', type=int, default=None, help='features of the first stage (default 32)')
    p.add_argument('--verify_dataset_integrity', action='store_true')
    p.add_argument('--clean', action='store_true', help='redo the fingerprint even if it exists')
    p.add_argument('--no_pp', action='store_true', help='plan only, do not preprocess')
    p.add_argument('--verbose', action='store_true')
    p.add_argument('--no_pbar', action='store_true')
    p.set_defaults(func=_plan_and_preprocess)

    p = sub.add_parser('phantom', help='write the synthetic liver-tumour CT phantom data set (nnU-Net raw layout)')
    p.add_argument('-d', type=int, default=501, help='dataset ID')
    p.add_argument('-name', default='LiverPhantom')
    p.add_argument('-n', type=int, default=16, help='training cases')
    p.add_argument('-t', type=int, default=4, help='held-out test cases (imagesTs/labelsTs)')
    p.add_argument('-seed', type=int, default=0)
    p.add_argument('-o', default=None, help='raw folder (default: $nnUNet_raw)')
    p.set_defaults(func=_phantom)

    p = sub.add_parser('demo', help='phantom -> plan -> nnUNetv2_train -> nnUNetv2_predict -> tumour Dice')
    p.add_argument('-workdir', default='demo_run', help='holds nnUNet_raw/preprocessed/results unless they are set')
    p.add_argument('-d', type=int, default=501)
    p.add_argument('-tr', default='nnUNetTrainerRAS_30epochs_25iters')
    p.add_argument('-min_dice', type=float, default=0.5, help='fail if the mean tumour Dice is lower')
    p.set_defaults(func=_demo)

    from nnunet_ras.dicom.cli import add_dicom_commands
    add_dicom_commands(sub)
    from nnunet_ras.evaluation.cli import add_evaluation_commands
    add_evaluation_commands(sub)
    from nnunet_ras.noise.cli import add_noise_commands
    add_noise_commands(sub)
    from nnunet_ras.quality.cli import add_quality_commands
    add_quality_commands(sub)
    from nnunet_ras.service.cli import add_service_commands
    add_service_commands(sub)
    return parser


def _internal_error(args) -> int:
    """Prints the traceback of the exception being handled, and that it is a bug; exit code 1."""
    import traceback
    traceback.print_exc()
    print(f"nnunet-ras: internal error in '{args.command}' (a bug in nnunet-ras or a library it calls, not a "
          f"problem with your input): please report it with the traceback above", file=sys.stderr)
    return 1


_MAIN_PID = None
_FORK_HOOK_REGISTERED = False


def _default_sigterm_in_child() -> None:
    """A worker process forked by nnU-Net (multiprocessing pools) must die on SIGTERM at once, as ``Pool.terminate``
    expects; a Python-level handler would only run once the worker's main thread returns to Python, which a worker
    blocked in C code never does."""
    import signal
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _raise_terminated(signal_number, frame) -> None:
    """SIGTERM in the command's own process becomes ``Terminated``, so that cleanup runs."""
    import os
    import signal
    if os.getpid() != _MAIN_PID:  # a child that did not go through os.fork's hooks
        signal.signal(signal_number, signal.SIG_DFL)
        os.kill(os.getpid(), signal_number)
        return
    from nnunet_ras.errors import Terminated
    raise Terminated(signal_number)


def main(argv: Optional[List[str]] = None) -> int:
    """Runs one command. A user mistake (``UserInputError``) is one line on stderr and exit code 2; SIGTERM and
    Ctrl-C remove the command's temporary output and exit with 143 / 130; anything else is a bug and keeps its
    traceback, with a line saying so."""
    import os
    import signal
    import threading
    from nnunet_ras.errors import Terminated, UserInputError
    args = build_parser().parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        global _MAIN_PID, _FORK_HOOK_REGISTERED
        _MAIN_PID = os.getpid()
        if not _FORK_HOOK_REGISTERED:
            os.register_at_fork(after_in_child=_default_sigterm_in_child)
            _FORK_HOOK_REGISTERED = True
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return args.func(args)
    except UserInputError as e:
        print(f"nnunet-ras: error: {e}", file=sys.stderr)
        return 2
    except (PermissionError, FileExistsError, NotADirectoryError, IsADirectoryError, FileNotFoundError) as e:
        if e.filename is None:  # not about a path the user can fix
            return _internal_error(args)
        # the backstop for a path the checks did not foresee: the file system names the path and the reason
        print(f"nnunet-ras: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    except Terminated as e:
        print(f"nnunet-ras: {e}; temporary output removed, nothing incomplete was written", file=sys.stderr)
        return 128 + e.signal_number
    except KeyboardInterrupt:
        print("nnunet-ras: interrupted; temporary output removed, nothing incomplete was written", file=sys.stderr)
        return 130
    except Exception:
        return _internal_error(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == '__main__':
    sys.exit(main())
