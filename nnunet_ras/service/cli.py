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
    """The served model: -m / -d as for predict, else the model that ``make demo`` trains."""
    from nnunet_ras.demo import DEMO_MODEL_CARD, demo_model_folder
    from nnunet_ras.dicom.predict import parse_style
    from nnunet_ras.service.models import ServedModel
    defaults = {}
    if args.m or args.d is not None:
        from nnunet_ras.dicom.cli import model_folders
        folders = model_folders(args)
    else:
        folders, defaults = [demo_model_folder()], DEMO_MODEL_CARD
        if not os.path.isfile(os.path.join(folders[0], 'fold_0', 'checkpoint_final.pth')):
            raise UserInputError(f"no model given (-m MODEL_FOLDER ...) and the demo's model is not at "
                                 f"{folders[0]}: run `make demo` (or `nnunet-ras demo`) in this folder first, or "
                                 f"give -m")
    return ServedModel(folders, args.f, args.chk, not args.disable_tta, args.postprocessing,
                       parse_style(args.roi_names, args.roi_colors, []), defaults, args.step_size, args.bf16,
                       args.torch_resampling)


def _rules_model(entry: dict, name: str, rules_path: str):
    """A [models.NAME] table of the rules file as a served model; relative folders are relative to the file."""
    from nnunet_ras.dicom.predict import DEFAULT_STEP_SIZE, parse_style
    from nnunet_ras.service.models import ServedModel
    base = os.path.dirname(rules_path)
    folders = [os.path.join(base, os.path.expanduser(str(m))) for m in
               (entry['model'] if isinstance(entry['model'], list) else [entry['model']])]
    try:
        style = parse_style([f"{k}={v}" for k, v in entry.get('roi_names', {}).items()],
                            [f"{k}={','.join(str(c) for c in v)}" for k, v in entry.get('roi_colors', {}).items()],
                            [])
        step_size = entry.get('step_size', DEFAULT_STEP_SIZE)
        if not isinstance(step_size, (int, float)) or isinstance(step_size, bool):
            raise UserInputError(f"step_size {step_size!r} is not a number")
        switches = {key: entry.get(key, False) for key in ('bf16', 'torch_resampling')}
        for key, value in switches.items():
            if not isinstance(value, bool):
                raise UserInputError(f"{key} = {value!r}: expected true or false")
        return ServedModel(folders, [str(f) for f in entry['folds']] if 'folds' in entry else None,
                           entry.get('checkpoint', 'checkpoint_final.pth'), not entry.get('disable_tta', False),
                           entry.get('postprocessing', 'auto'), style, step_size=float(step_size),
                           **switches)
    except UserInputError as e:
        raise UserInputError(f"{rules_path} [models.{name}]: {e}") from None


def _node_settings(args, default_model, store):
    """The DICOM node's settings: the rules file, with command-line options over its [node] table."""
    from nnunet_ras.service.dicom_node import NodeSettings
    from nnunet_ras.service.rules import DEFAULT_MODEL, check_ae_title, load_rules
    if not args.rules:
        raise UserInputError("the DICOM node needs --rules RULES.toml (who may send, what runs, where results go)")
    rules = load_rules(args.rules)
    models = {DEFAULT_MODEL: default_model}
    for name, entry in rules.models.items():
        models[name] = _rules_model(entry, name, rules.path)
    for rule in rules.rules:
        try:
            models[rule.model].check_margins(rule.margins)
        except UserInputError as e:
            raise UserInputError(f"{rules.path} [[rules]] #{rule.index}: {e}") from None
    users = {u.name for u in store.users()}
    for sender in rules.senders.values():
        if sender.owner not in users:
            print(f"note: [senders.{sender.ae_title}] owner {sender.owner!r} is not a user of the service: only "
                  f"admins see its jobs (add it with: nnunet-ras serve-admin add-user {sender.owner})", flush=True)
    chosen = dict(rules.node)  # the rules' [node] table (checked), then the command line; NodeSettings has defaults
    for option, setting in (('ae_title', 'ae_title'), ('dicom_port', 'port'), ('quiet_s', 'quiet_s'),
                            ('send_attempts', 'send_attempts'), ('send_backoff_s', 'send_backoff_s')):
        if getattr(args, option) is not None:
            chosen[setting] = getattr(args, option)
    if 'ae_title' in chosen:
        chosen['ae_title'] = check_ae_title(chosen['ae_title'], '--ae_title')
    return NodeSettings(rules, models, host=args.dicom_host or args.host, **chosen)


def _start_message(store, data_folder: str, host: str) -> None:
    """The first start on loopback creates the admin user and prints its token once."""
    if store.users():
        return
    if not _is_loopback(host):
        raise UserInputError(f"--host {host} is not loopback and no user has a token: add users first "
                             f"(nnunet-ras serve-admin add-user NAME --data {data_folder})")
    token = store.add_user('admin', 'admin')
    print(f"\nNo users yet: created the admin user 'admin'. Its API token (shown only now, only a hash is "
          f"kept):\n\n    {token}\n\nAdd users with: nnunet-ras serve-admin add-user NAME --data "
          f"{data_folder}\n", flush=True)


def _serve(args) -> int:
    import uvicorn
    from nnunet_ras.service.app import ServiceSettings, create_app
    from nnunet_ras.service.store import Store
    from nnunet_ras.service.uploads import Limits

    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(levelname)s %(message)s')
    queue = _queue_settings(args)
    model = _served_model(args)
    store = Store(queue.data_folder)
    node = _node_settings(args, model, store) if args.dicom_port is not None or args.rules else None
    _start_message(store, queue.data_folder, args.host)
    settings = ServiceSettings(queue, model, Limits(args.max_upload_mb << 20, args.max_unzipped_mb << 20,
                                                    args.max_files),
                               in_process_worker=not args.no_worker, dicom=node)
    app = create_app(settings)
    print(f"serving {model.card['name']} on http://{args.host}:{args.port} (data: {queue.data_folder}, queue: "
          f"{args.queue or 'SQLite'}, {'no in-process worker' if args.no_worker else 'one in-process worker'})" +
          (f"; DICOM node {node.ae_title} on {node.host}:{node.port}" if node else ''), flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level='info')
    return 0


def _dicom_node(args) -> int:
    """The DICOM node without the web page: receiving, jobs (an in-process worker unless --no_worker), recovery and
    delivery, until SIGINT / SIGTERM."""
    import signal
    import threading
    from nnunet_ras.service.dicom_node import DicomNode
    from nnunet_ras.service.jobs import JobQueue, Recovery

    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s %(levelname)s %(message)s')
    queue = JobQueue(_queue_settings(args))
    node_settings = _node_settings(args, _served_model(args), queue.store)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    recovery = Recovery(queue)
    recovery.start()
    consumer = None if args.no_worker else queue.consumer()
    if consumer is not None:
        consumer.start()
    node = DicomNode(node_settings, queue.store, queue).start()
    print(f"DICOM node {node_settings.ae_title} on {node_settings.host}:{node_settings.port} (data: "
          f"{queue.settings.data_folder}, rules: {node_settings.rules.path}, "
          f"{'no in-process worker' if args.no_worker else 'one in-process worker'})", flush=True)
    stop.wait()
    node.stop()
    recovery.stopped.set()
    if consumer is not None:
        consumer.stop(graceful=False)
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


def _model_options(p: argparse.ArgumentParser) -> None:
    from nnunet_ras.dicom.cli import add_model_arguments
    add_model_arguments(p, " (default: the model of `make demo`)")
    p.add_argument('--postprocessing', default='auto', metavar='auto|none|FILE', help='as for predict')
    p.add_argument('--roi_names', nargs='+', default=[], metavar='LABEL=ROI',
                   help="ROI names for the model's labels (default: the model card's, else the label names)")
    p.add_argument('--roi_colors', nargs='+', default=[], metavar='ROI=R,G,B', help='e.g. GTV=255,0,0')


def _node_options(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_argument_group('DICOM node' + ('' if required else ' (started with --dicom_port or --rules)'))
    g.add_argument('--rules', required=required, metavar='RULES.toml',
                   help='who may send, which model and margins run on which series, where results go')
    g.add_argument('--dicom_port', '--dicom-port', type=int, default=None,
                   help="the node's DICOM port (default: the rules' [node] port, else 11112)")
    g.add_argument('--ae_title', '--ae-title', default=None, help="the node's AE title (default: NNUNET_RAS)")
    g.add_argument('--dicom_host', default=None,
                   help='address the node listens on (default: --host; 0.0.0.0 for a TPS on another machine)')
    g.add_argument('--quiet_s', type=float, default=None,
                   help='a series is complete this long after its last instance, if its association was not '
                        'released (default 10)')
    g.add_argument('--send_attempts', type=int, default=None, help='C-STORE attempts per result (default 8)')
    g.add_argument('--send_backoff_s', type=float, default=None,
                   help='wait after the first failed send, doubled after each (at most 300 s; default 5)')


def add_service_commands(subparsers) -> None:
    p = subparsers.add_parser('serve', help='the contouring service: web page and JSON API (FastAPI on uvicorn) with '
                                            'a job queue (huey), optionally with the DICOM node')
    _model_options(p)
    p.add_argument('--host', default='127.0.0.1', help='address to bind (default: loopback only)')
    p.add_argument('--port', type=int, default=8000)
    p.add_argument('--no_worker', action='store_true',
                   help='run no worker in this process (start `nnunet-ras worker` processes instead)')
    p.add_argument('--max_upload_mb', type=int, default=1024, help='largest upload taken')
    p.add_argument('--max_unzipped_mb', type=int, default=4096, help='most bytes a zip may unpack to')
    p.add_argument('--max_files', type=int, default=5000, help='most files in one upload or zip')
    _queue_options(p)
    _node_options(p, required=False)
    p.set_defaults(func=_serve)

    p = subparsers.add_parser('dicom-node', help='the DICOM node alone: a TPS / PACS sends a CT (C-STORE), gets the '
                                                 'RTSTRUCT (and SEG) back; jobs on the service\'s queue and job table')
    _model_options(p)
    p.add_argument('--host', default='127.0.0.1', help='address to listen on (default: loopback only)')
    p.add_argument('--no_worker', action='store_true', help='run no worker in this process')
    _queue_options(p)
    _node_options(p, required=True)
    p.set_defaults(func=_dicom_node)

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
