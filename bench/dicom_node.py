"""The DICOM node end to end on loopback: wall time from the first C-STORE of a full-size CT (512 x 512 x ~100) to
its RTSTRUCT arriving in a PACS, split into receive / series complete / queue / preprocess / predict / export / send.

Debian's Orthanc plays the PACS and the TPS: it holds the CT, pushes it to ``nnunet-ras dicom-node`` (C-STORE, one
association) and receives the RTSTRUCT back. The CT is the real abdominal CT of ``../shared/data/ct_abdomen_example``
(112 slices at 3 mm) resampled in-plane to 512 x 512 and cut to ``--slices`` slices, written as a DICOM series.
Times come from the node's job table (the node and the bench share this machine's clock). Bounded: one series, at
most ``--timeout_s``; Orthanc and the node are stopped at the end; traffic goes only to 127.0.0.1. A finished run's
result is kept in ``--out`` and printed again unless ``--force``.

    python bench/dicom_node.py [--model MODEL_FOLDER] [--slices 100] [--tta] [--out bench/results/dicom_node]

The default model is the one ``make demo`` trains; prediction runs without mirroring unless ``--tta``.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import httpx
import SimpleITK as sitk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from nnunet_ras.demo import demo_model_folder  # noqa: E402
from nnunet_ras.dicom.phantom import write_ct_series  # noqa: E402
from nnunet_ras.service.launch import OrthancProcess, dicom_echo, free_port  # noqa: E402
from nnunet_ras.service.store import Store  # noqa: E402
from nnunet_ras.workspace import Workspace  # noqa: E402

CT = os.path.join(ROOT, '..', 'shared', 'data', 'ct_abdomen_example', 'example_ct.nii.gz')
RULES = """
[senders.ORTHANC]
host = "127.0.0.1"
port = {port}

[[rules]]
margins = ["CTV=GTV+5@Liver", "PTV=CTV+5"]
send_to = ["sender"]
"""


def full_size_ct(slices: int, slice_mm: float = None) -> sitk.Image:
    """The shared abdominal CT at 512 x 512 in-plane (its field of view kept), ``slices`` slices of ``slice_mm`` (its
    own 3 mm if not given) from the middle of its extent."""
    image = sitk.ReadImage(CT)
    size, own = image.GetSize(), image.GetSpacing()
    spacing = [own[0] * size[0] / 512, own[1] * size[1] / 512, slice_mm or own[2]]
    first = (size[2] * own[2] - slices * spacing[2]) / 2 / own[2] if slice_mm else (size[2] - slices) // 2
    origin = image.TransformContinuousIndexToPhysicalPoint((0., 0., float(first)))
    return sitk.Resample(image, [512, 512, slices], sitk.Transform(), sitk.sitkLinear, origin, spacing,
                         image.GetDirection(), -1024, sitk.sitkInt16)


def wait_for(condition, timeout: float, what: str, step: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise RuntimeError(f'{what}: not within {timeout} s')


def rtstruct_count(orthanc: OrthancProcess) -> int:
    return len(httpx.post(orthanc.url + '/tools/find', json={'Level': 'Instance', 'Query': {'Modality': 'RTSTRUCT'}},
                          timeout=30).json())


def run(model: str, slices: int, tta: bool, step_size: float, work: str, timeout_s: float) -> dict:
    # nnUNet_def_n_proc stays unset: nnU-Net caps the sliding window's torch threads at it (1 would use one core)
    ws = Workspace(os.path.join(work, 'nnunet'), nnUNet_n_proc_DA='1')
    node_port = free_port()
    orthanc = OrthancProcess(os.path.join(work, 'orthanc'), 'ORTHANC',
                             {'node': ('NNUNET_RAS', '127.0.0.1', node_port)}).start()
    node = None
    try:
        series_folder = os.path.join(work, 'ct')
        write_ct_series(full_size_ct(slices), series_folder, 'BENCH_CT', 'BENCH^CT')
        for name in sorted(os.listdir(series_folder)):
            with open(os.path.join(series_folder, name), 'rb') as f:
                httpx.post(orthanc.url + '/instances', content=f.read(), timeout=60).raise_for_status()
        series_id = httpx.get(orthanc.url + '/series', timeout=30).json()[0]
        rules = os.path.join(work, 'rules.toml')
        with open(rules, 'w') as f:
            f.write(RULES.format(port=orthanc.dicom_port))
        data = os.path.join(work, 'data')
        log = open(os.path.join(work, 'node.log'), 'w')
        node = subprocess.Popen(['nnunet-ras', 'dicom-node', '-m', model, '--data', data, '--rules', rules,
                                 '--dicom_port', str(node_port), '--quiet_s', '2', '-device', 'cpu',
                                 '--roi_names', 'tumour=GTV', 'liver=Liver', '-step_size', str(step_size)] +
                                ([] if tta else ['--disable_tta']),
                                env=ws.env, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: dicom_echo(node_port, 'NNUNET_RAS', 'ORTHANC') is not None, 120, 'the node')
        first_store = time.time()
        answer = httpx.post(f'{orthanc.url}/modalities/node/store', json={'Resources': [series_id],
                                                                          'Synchronous': True}, timeout=timeout_s)
        answer.raise_for_status()
        received = time.time()
        wait_for(lambda: rtstruct_count(orthanc) >= 1, timeout_s, 'the RTSTRUCT in Orthanc', step=0.5)
        arrived = time.time()
        store = Store(data)  # the node records the delivery just after Orthanc has the file
        job = wait_for(lambda: next((j for j in store.jobs() if (j.delivery or {}).get('state') == 'sent'), None),
                       60, 'the delivery recorded')
        if job.state != 'done':
            raise RuntimeError(f'the job {job.state}: {job.error}')
        with open(f'/proc/{node.pid}/status') as f:  # the node's peak resident memory (its worker is a thread)
            peak_kb = next(int(line.split()[1]) for line in f if line.startswith('VmHWM:'))
        t = job.timings
        return {'slices': slices, 'size': '512 x 512', 'tta': tta, 'step_size': step_size, 'model': model,
                'receive_s': round(received - first_store, 2),
                'slices_per_s': round(slices / (received - first_store), 1),
                'series_complete_to_job_s': round(job.created - received, 2),
                'queue_s': round(job.started - job.created, 2),
                'preprocess_s': t.get('preprocessing'), 'predict_s': t.get('predicting'),
                'export_s': t.get('exporting'),
                'send_s': round(job.delivery['finished'] - job.finished, 2),
                'total_s': round(arrived - first_store, 1), 'node_peak_rss_mb': round(peak_kb / 1024),
                'delivery_attempts': job.delivery['attempts']}
    finally:
        if node is not None and node.poll() is None:
            node.terminate()
            node.wait(60)
        orthanc.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default=None, help="model folder (default: make demo's)")
    parser.add_argument('--slices', type=int, default=100)
    parser.add_argument('--tta', action='store_true', help='predict with mirroring (much slower on a CPU)')
    parser.add_argument('--step_size', type=float, default=0.5, help="the sliding window's step (-step_size)")
    parser.add_argument('--timeout_s', type=float, default=1800)
    parser.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results', 'dicom_node'))
    parser.add_argument('--force', action='store_true', help='run again even if --out has a result')
    args = parser.parse_args()
    result_file = os.path.join(args.out, f"result_{args.slices}{'_tta' if args.tta else ''}"
                                         f"{'' if args.step_size == 0.5 else f'_step{args.step_size:g}'}.json")
    if os.path.isfile(result_file) and not args.force:
        with open(result_file) as f:
            result = json.load(f)
    else:
        model = args.model or demo_model_folder()
        if not os.path.isfile(os.path.join(model, 'fold_0', 'checkpoint_final.pth')):
            sys.exit(f"no trained model at {model}: run `make demo` first or give --model")
        work = tempfile.mkdtemp(prefix='bench_dicom_node_')
        try:
            result = run(model, args.slices, args.tta, args.step_size, work, args.timeout_s)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        os.makedirs(args.out, exist_ok=True)
        with open(result_file, 'w') as f:
            json.dump(result, f, indent=2)
    print(f"DICOM node, {result['size']} x {result['slices']} CT, {'with' if result['tta'] else 'no'} TTA, "
          f"step size {result.get('step_size', 0.5):g}, "
          f"{os.cpu_count()} CPU cores, no GPU\n")
    print('| receive | series complete -> job | queue | preprocess | predict | export | send | first C-STORE -> '
          'RTSTRUCT in PACS | receive rate |')
    print('|---|---|---|---|---|---|---|---|---|')
    print(f"| {result['receive_s']} s | {result['series_complete_to_job_s']} s | {result['queue_s']} s | "
          f"{result['preprocess_s']} s | {result['predict_s']} s | {result['export_s']} s | {result['send_s']} s | "
          f"**{result['total_s']} s** | {result['slices_per_s']} slices/s |")
    print(f"\nnode peak memory (receiving, predicting and sending in one process): {result['node_peak_rss_mb']} MB")
    return 0


if __name__ == '__main__':
    sys.exit(main())
