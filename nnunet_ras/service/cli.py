"""``nnunet-ras serve``, ``nnunet-ras worker`` and ``nnunet-ras serve-admin``."""
import argparse
import ipaddress
import logging
import os

from nnunet_ras.errors import UserInputError

DATA_ENV = 'nnUNet_ras_service'
DEFAULT_DATA = 'nnunet_ras_service'


def _data_folder(args) -> str:
    return os.path.abspath(args.data or os.environ.get(DATA_ENV) or DEFAULT_DATA)


def _is_loopback(host: str) -> bool:
    if host == 'localhost':
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _queue_settings(args):
    from nnunet_ras.dicom.cli import check_device
    from nnunet_ras.service.jobs import QueueSettings
    import torch
    if args.stale_after_s <= 2 * args.heartbeat_s:
        raise UserInputError(f"--stale_after_s {args.stale_after_s:g} must be more than twice --heartbeat_s "
                             f"{args.heartbeat_s:g}, or a busy worker would be taken for a dead one")
    return QueueSettings(_data_folder(args), args.queue,
                         check_device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu')),
                         args.heartbeat_s, args.stale_after_s, keep_days=args.keep_days)


def _served_model(args):
    """(model folders, card defaults): -m / -d as for predict, else the model that ``make demo`` trains."""
    from nnunet_ras.demo import DEMO_MODEL_CARD, demo_model_folder
    if args.m or args.d is not None:
        from nnunet_ras.dicom.cli import model_folders
        return model_folders(args), {}
    folder = demo_model_folder()
    if not os.path.isfile(os.path.join(folder, 'fold_0', 'checkpoint_final.pth')):
        raise UserInputError(f"no model given (-m MODEL_FOLDER ...) and the demo's model is not at {folder}: run "
                             f"`make demo` (or `nnunet-ras demo`) in this folder first, or give -m")
    return [folder], DEMO_MODEL_CARD


def _serve(args) -> int:
    import uvicorn
    from nnunet_ras.dicom.predict import parse_style
    from nnunet_ras.service.app import ServiceSettings, create_app
    from nnunet_ras.service.models import model_card
    from nnunet_ras.service.store import Store
    from nnunet_ras.service.uploads import Limits

    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(levelname)s %(message)s')
    queue = _queue_settings(args)
    models, defaults = _served_model(args)
    card = model_card(models, args.f, args.chk, defaults)
    style = parse_style(args.roi_names, args.roi_colors, [])
    store = Store(queue.data_folder)
    if not store.users():
        if not _is_loopback(args.host):
            raise UserInputError(f"--host {args.host} is not loopback and no user has a token: add users first "
                                 f"(nnunet-ras serve-admin add-user NAME --data {queue.data_folder})")
        token = store.add_user('admin', 'admin')
        print(f"\nNo users yet: created the admin user 'admin'. Its API token (shown only now, only a hash is "
              f"kept):\n\n    {token}\n\nAdd users with: nnunet-ras serve-admin add-user NAME --data "
              f"{queue.data_folder}\n", flush=True)
    queue.extra_report = {'model_card': card}
    settings = ServiceSettings(queue, models, args.f, args.chk, not args.disable_tta, args.postprocessing,
                               {**card['roi_names'], **style.names},
                               {**card['roi_colors'], **{k: list(v) for k, v in style.colors.items()}},
                               Limits(args.max_upload_mb << 20, args.max_unzipped_mb << 20, args.max_files), card,
                               in_process_worker=not args.no_worker)
    app = create_app(settings)
    print(f"serving {card['name']} on http://{args.host}:{args.port} (data: {queue.data_folder}, queue: "
          f"{args.queue or 'SQLite'}, {'no in-process worker' if args.no_worker else 'one in-process worker'})",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level='info')
    return 0


def _worker(args) -> int:
    from nnunet_ras.service.jobs import JobQueue
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(levelname)s %(message)s')
    queue = JobQueue(_queue_settings(args))
    print(f"worker on {args.queue or 'the SQLite queue'} of {queue.settings.data_folder}, device "
          f"{queue.settings.device}", flush=True)
    queue.consumer(args.workers, handle_signals=True).run()
    return 0


def _admin(args) -> int:
    from nnunet_ras.service.store import Store
    if args.action != 'list-users' and not args.name:
        raise UserInputError(f"serve-admin {args.action}: give the user's NAME")
    store = Store(_data_folder(args))
    if args.action == 'add-user':
        token = store.add_user(args.name, 'admin' if args.admin else 'user')
        print(f"user {args.name} ({'admin' if args.admin else 'user'}); API token, shown only now:\n{token}")
    elif args.action == 'remove-user':
        store.remove_user(args.name)
        print(f"user {args.name} removed; their token no longer works (their jobs stay until deleted or expired)")
    else:
        for user in store.users():
            print(f"{user.name:24s} {user.role}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument('--data', default=None,
                   help=f'the service\'s data folder: job table, queue, uploads, results (default: ${DATA_ENV} or '
                        f'./{DEFAULT_DATA}); workers on other machines must see the same folder')


def _queue_options(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument('--queue', default=None, metavar='redis://HOST:PORT/DB',
                   help='a Redis queue shared by several workers (default: SQLite in the data folder)')
    p.add_argument('-device', default=None, choices=['cuda', 'cpu', 'mps'], help='default: cuda if available')
    p.add_argument('--heartbeat_s', type=float, default=5.0, help='how often a running job reports it is alive')
    p.add_argument('--stale_after_s', type=float, default=60.0,
                   help='a running job without a heartbeat this long is re-queued once, then failed')
    p.add_argument('--keep_days', type=float, default=30.0, help='finished jobs and their files are deleted after')


def add_service_commands(subparsers) -> None:
    from nnunet_ras.dicom.cli import add_model_arguments
    p = subparsers.add_parser('serve', help='the contouring service: web page and JSON API (FastAPI on uvicorn) with '
                                            'a job queue (huey)')
    add_model_arguments(p, " (default: the model of `make demo`)")
    p.add_argument('--postprocessing', default='auto', metavar='auto|none|FILE', help='as for predict')
    p.add_argument('--roi_names', nargs='+', default=[], metavar='LABEL=ROI',
                   help="ROI names for the model's labels (default: the model card's, else the label names)")
    p.add_argument('--roi_colors', nargs='+', default=[], metavar='ROI=R,G,B', help='e.g. GTV=255,0,0')
    p.add_argument('--host', default='127.0.0.1', help='address to bind (default: loopback only)')
    p.add_argument('--port', type=int, default=8000)
    p.add_argument('--no_worker', action='store_true',
                   help='run no worker in this process (start `nnunet-ras worker` processes instead)')
    p.add_argument('--max_upload_mb', type=int, default=1024, help='largest upload taken')
    p.add_argument('--max_unzipped_mb', type=int, default=4096, help='most bytes a zip may unpack to')
    p.add_argument('--max_files', type=int, default=5000, help='most files in one upload or zip')
    _queue_options(p)
    p.set_defaults(func=_serve)

    p = subparsers.add_parser('worker', help="a worker of the contouring service's queue (one per GPU or CPU slot; "
                                             "on any machine that shares the data folder)")
    p.add_argument('--workers', type=int, default=1, help='jobs run at once by this process')
    _queue_options(p)
    p.set_defaults(func=_worker)

    p = subparsers.add_parser('serve-admin', help="the contouring service's users and their API tokens")
    p.add_argument('action', choices=['add-user', 'remove-user', 'list-users'])
    p.add_argument('name', nargs='?', default=None)
    p.add_argument('--admin', action='store_true', help='the user sees and manages every job')
    _common(p)
    p.set_defaults(func=_admin)
