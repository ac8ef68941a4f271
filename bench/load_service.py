"""Load test of the contouring service on loopback: N jobs from M concurrent clients, SQLite and Redis + 2 workers.

Each client thread submits its share of the jobs (DICOM zips of phantom patients, margins CTV and PTV), polls them
to the end and downloads the label map; every label map must equal the one ``nnunet-ras predict`` makes of the same
CT (so a lost, mixed-up or wrong job counts). Prints throughput and the p50 / p95 of submit latency, queue wait
(submitted -> started) and whole job (submitted -> done). Bounded: at most ``--jobs`` jobs and ``--timeout_s`` per
configuration; everything it starts (servers, workers, redis-server) is stopped at the end, and traffic goes only to
127.0.0.1.

    python bench/load_service.py [--model MODEL_FOLDER] [--jobs 40] [--clients 8] [--out bench/results/load]

The default model is the one ``make demo`` trains. Run it alone on the machine.
"""
import argparse
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import numpy as np
import SimpleITK as sitk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from nnunet_ras.demo import demo_model_folder  # noqa: E402
from nnunet_ras.dicom.phantom import write_phantom_patients  # noqa: E402
from nnunet_ras.service.launch import ServiceProcess, free_port, zip_folder  # noqa: E402
from nnunet_ras.workspace import Workspace  # noqa: E402

MARGINS = ['CTV=GTV+5@Liver', 'PTV=CTV+5']
ROI_NAMES = ['--roi_names', 'tumour=GTV', 'liver=Liver']


def labels_digest(path: str) -> str:
    return hashlib.sha1(np.ascontiguousarray(sitk.GetArrayFromImage(sitk.ReadImage(path))).tobytes()).hexdigest()


def reference_digests(model: str, cts: list, env: dict, work: str) -> list:
    """The label map ``nnunet-ras predict`` makes of each CT (same settings as the service)."""
    digests = []
    for i, ct in enumerate(cts):
        out = os.path.join(work, f'reference{i}')
        subprocess.run(['nnunet-ras', 'predict', '-i', ct, '-o', out, '-m', model, '-device', 'cpu', '--disable_tta',
                        *ROI_NAMES, '--margin', *MARGINS], env=env, check=True, capture_output=True)
        report = next(n for n in os.listdir(out) if n.endswith('_report.json'))
        digests.append(labels_digest(os.path.join(out, report[:-len('_report.json')] + '.nii.gz')))
    return digests


def percentile(values, q):
    return float(np.percentile(values, q)) if values else float('nan')


def run_clients(url: str, token: str, zips: list, expected: list, jobs: int, clients: int, timeout_s: float,
                work: str) -> dict:
    results, lock = [], threading.Lock()
    deadline = time.time() + timeout_s

    def client(index: int) -> None:
        api = httpx.Client(base_url=url, headers={'Authorization': f'Bearer {token}'}, timeout=120)
        for n in range(index, jobs, clients):
            which = n % len(zips)
            row = {'n': n, 'input': which, 'ok': False}
            start = time.time()
            with open(zips[which], 'rb') as f:
                answer = api.post('/api/jobs', files=[('files', ('ct.zip', f))],
                                  data={'margin': MARGINS})
            row['submit_s'] = time.time() - start
            if answer.status_code != 201:
                row['error'] = f'submit {answer.status_code}: {answer.text[:200]}'
            else:
                job_id = answer.json()['id']
                while time.time() < deadline:
                    job = api.get(f'/api/jobs/{job_id}').json()
                    if job['state'] in ('done', 'failed'):
                        break
                    time.sleep(0.25)
                row['job_s'] = time.time() - start
                row['state'] = job['state']
                if job['state'] == 'done':
                    target = os.path.join(work, f'{job_id}.nii.gz')
                    with open(target, 'wb') as out:
                        out.write(api.get(job['files']['labels']).content)
                    row['ok'] = labels_digest(target) == expected[which]
                    os.remove(target)
                    row['queue_s'] = (_seconds(job['started']) - _seconds(job['created']))
                else:
                    row['error'] = job.get('error') or f"still {job['state']} at the time limit"
            with lock:
                results.append(row)

    start = time.time()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - start
    done = [r for r in results if r.get('state') == 'done']
    return {'jobs': jobs, 'clients': clients, 'wall_s': round(wall, 1), 'finished': len(done),
            'lost': jobs - len(results) + sum(1 for r in results if r.get('state') not in ('done', 'failed')),
            'failed': sum(1 for r in results if r.get('state') == 'failed' or 'submit' in r.get('error', '')),
            'wrong': sum(1 for r in done if not r['ok']),
            'jobs_per_min': round(60 * len(done) / wall, 2),
            'submit_p50_s': percentile([r['submit_s'] for r in results], 50),
            'submit_p95_s': percentile([r['submit_s'] for r in results], 95),
            'queue_p50_s': percentile([r['queue_s'] for r in done], 50),
            'queue_p95_s': percentile([r['queue_s'] for r in done], 95),
            'job_p50_s': percentile([r['job_s'] for r in done], 50),
            'job_p95_s': percentile([r['job_s'] for r in done], 95),
            'errors': sorted({r['error'] for r in results if r.get('error')})[:5]}


def stop_all(processes: list) -> None:
    """Stops what a configuration started (servers, workers, redis-server), last started first, and forgets it."""
    while processes:
        p = processes.pop()
        if isinstance(p, ServiceProcess):
            p.stop()
        else:
            p.terminate()
            p.wait(30)


def _seconds(iso: str) -> float:
    return datetime.datetime.fromisoformat(iso).timestamp()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default=None, help="model folder (default: make demo's)")
    parser.add_argument('--jobs', type=int, default=40)
    parser.add_argument('--clients', type=int, default=8)
    parser.add_argument('--inputs', type=int, default=4, help='different phantom CTs sent in turn')
    parser.add_argument('--timeout_s', type=float, default=900, help='per configuration')
    parser.add_argument('--configs', nargs='+', default=['sqlite', 'redis'], choices=['sqlite', 'redis'])
    parser.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results', 'load_service'))
    args = parser.parse_args()
    model = args.model or demo_model_folder(os.path.join(ROOT, 'demo_run'))
    if not os.path.isdir(model):
        print(f"no model at {model}: run `make demo` first or give --model", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp(prefix='load_service_', dir=args.out)
    env = Workspace(work, nnUNet_def_n_proc='1').env
    processes = []
    try:
        patients = write_phantom_patients(os.path.join(work, 'patients'), args.inputs, seed=21, with_rtstruct=False)
        cts = [os.path.join(p, 'CT') for p in patients]
        zips = [zip_folder(ct, os.path.join(work, f'ct{i}.zip')) for i, ct in enumerate(cts)]
        expected = reference_digests(model, cts, env, work)
        rows = {}
        for config in args.configs:
            data = os.path.join(work, f'data_{config}')
            extra = ['--disable_tta', *ROI_NAMES, '--max_upload_mb', '64']
            if config == 'redis':
                port = free_port()
                redis = subprocess.Popen(['redis-server', '--port', str(port), '--bind', '127.0.0.1', '--save', '',
                                          '--appendonly', 'no', '--dir', work], stdout=subprocess.DEVNULL)
                processes.append(redis)
                queue = f'redis://127.0.0.1:{port}/0'
                extra += ['--queue', queue, '--no_worker']
            server = ServiceProcess(env, data, model, *extra).start()
            processes.append(server)
            if config == 'redis':
                for i in range(2):
                    processes.append(subprocess.Popen(
                        ['nnunet-ras', 'worker', '--data', data, '--queue', queue, '-device', 'cpu'], env=env,
                        stdout=open(os.path.join(work, f'worker{i}.log'), 'w'), stderr=subprocess.STDOUT))
            rows[config] = run_clients(server.url, server.token, zips, expected, args.jobs, args.clients,
                                       args.timeout_s, work)
            stop_all(processes)
        with open(os.path.join(args.out, 'load_service.json'), 'w') as f:
            json.dump(rows, f, indent=2)
        print(f"\n{args.jobs} jobs from {args.clients} clients, {args.inputs} phantom CTs (DICOM zip, "
              f"{len(os.listdir(cts[0]))} slices), model {os.path.basename(model)}, no TTA\n")
        print('| queue | workers | wall s | jobs/min | lost | failed | wrong | submit p50 / p95 s | '
              'queue wait p50 / p95 s | job p50 / p95 s |')
        print('|---|---|---|---|---|---|---|---|---|---|')
        for config, r in rows.items():
            print(f"| {'SQLite' if config == 'sqlite' else 'Redis'} | {'1 in serve' if config == 'sqlite' else '2'} "
                  f"| {r['wall_s']} | {r['jobs_per_min']} | {r['lost']} | {r['failed']} | {r['wrong']} | "
                  f"{r['submit_p50_s']:.2f} / {r['submit_p95_s']:.2f} | {r['queue_p50_s']:.1f} / "
                  f"{r['queue_p95_s']:.1f} | {r['job_p50_s']:.1f} / {r['job_p95_s']:.1f} |")
            for e in r['errors']:
                print(f"  error: {e}")
        bad = sum(r['lost'] + r['failed'] + r['wrong'] for r in rows.values())
        return 1 if bad else 0
    finally:
        stop_all(processes)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    sys.exit(main())
