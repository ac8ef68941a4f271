"""The contouring service's API against a real uvicorn server, a real trained model and real users.

Each test talks HTTP to ``nnunet-ras serve`` started on a free loopback port by the fixtures in conftest.py; the
files it returns are read back with libraries the service does not use to write them (rt-utils for RTSTRUCT).
"""
import gzip
import io
import os
import shutil
import time
import zipfile

import httpx
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from nnunet_ras.dicom.readers import plastimatch_masks
from nnunet_ras.dicom.series import label_on_series_grid, read_ct_series
from nnunet_ras.evaluation.metrics import dice
from nnunet_ras.service.store import Store
from nnunet_ras.service.launch import ServiceProcess, free_port, zip_folder

pytestmark = pytest.mark.e2e


def client(server, token=None) -> httpx.Client:
    headers = {'Authorization': f'Bearer {token or server.token}'}
    return httpx.Client(base_url=server.url, headers=headers, timeout=60)


def submit(api: httpx.Client, paths, margins=()) -> httpx.Response:
    files = [('files', (os.path.basename(p), open(p, 'rb'))) for p in paths]
    try:
        return api.post('/api/jobs', files=files, data={'margin': list(margins)})
    finally:
        for _, (_, f) in files:
            f.close()


def wait(api: httpx.Client, job_id: str, timeout: float = 300, states=('done', 'failed')) -> dict:
    deadline, seen = time.time() + timeout, []
    while time.time() < deadline:
        job = api.get(f'/api/jobs/{job_id}').json()
        if not seen or seen[-1] != job['state']:
            seen.append(job['state'])
        if job['state'] in states:
            job['seen'] = seen
            return job
        time.sleep(0.2)
    raise AssertionError(f'job {job_id} still {seen} after {timeout} s')


def job_folders(server) -> set:
    folder = os.path.join(server.data, 'jobs')
    return set(os.listdir(folder)) if os.path.isdir(folder) else set()


def test_dicom_zip_job_runs_and_its_rtstruct_matches_the_label_map(service, tmp_path):
    from rt_utils import RTStructBuilder
    api = client(service)
    me = api.get('/api/me')
    assert me.json() == {'name': 'admin', 'role': 'admin'}
    assert me.headers['x-frame-options'] == 'DENY' and me.headers['x-content-type-options'] == 'nosniff'
    card = api.get('/api/model').json()
    assert card['warning'].startswith('NOT FOR CLINICAL USE') and card['labels'] == {'liver': 1, 'tumour': 2}
    assert card['has_quality'] and card['roi_names'] == {'liver': 'Liver', 'tumour': 'GTV'}
    answer = submit(api, [service.dicom_zip], ['CTV=GTV+5@Liver', 'PTV=CTV+5'])
    assert answer.status_code == 201, answer.text
    job = wait(api, answer.json()['id'])
    assert job['state'] == 'done', job
    assert job['input'] == {'kind': 'dicom', 'name': 'ct.zip', 'patient': job['input']['patient']}
    assert job['progress'] == 1.0 and job['timings_s']['predicting'] >= 0
    assert [s['name'] for s in job['structures']] == ['Liver', 'GTV', 'CTV', 'PTV']
    assert isinstance(job['quality_score'], float) and np.isfinite(job['quality_score'])  # the model's QAM scored it

    labels_path = tmp_path / 'labels.nii.gz'
    labels_path.write_bytes(api.get(job['files']['labels']).content)
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(labels_path)))
    rtstruct_path = tmp_path / 'rt.dcm'
    rtstruct_path.write_bytes(api.get(job['files']['rtstruct']).content)
    rt = RTStructBuilder.create_from(dicom_series_path=service.cts[0], rt_struct_path=str(rtstruct_path))
    assert set(rt.get_roi_names()) == {'Liver', 'GTV', 'CTV', 'PTV'}
    series = read_ct_series(service.cts[0])
    for name, image in plastimatch_masks(str(rtstruct_path), service.cts[0]).items():
        if name in ('Liver', 'GTV'):
            read_back = label_on_series_grid(image, series) > 0
            expected = labels == (1 if name == 'Liver' else 2)
            assert expected.sum() > 0, 'the 1-epoch test model should still contour something'
            assert dice(read_back.astype(np.uint8), expected.astype(np.uint8), 1) >= 0.99, name
    structure = api.get(job['structures'][0]['url'])
    mask = sitk.GetArrayFromImage(sitk.ReadImage(_save(tmp_path / 's0.nii.gz', structure.content)))
    assert np.array_equal(mask.astype(bool), labels == 1)

    report = api.get(job['files']['report']).json()
    assert report['model_card']['warning'].startswith('NOT FOR CLINICAL USE')
    assert report['job']['owner'] == 'admin' and report['job']['id'] == job['id']
    names = zipfile.ZipFile(io.BytesIO(api.get(job['files']['zip']).content)).namelist()
    assert any(n.endswith('_RTSTRUCT.dcm') for n in names) and any(n.endswith('_SEG.dcm') for n in names)
    assert any(n.endswith('_PTV.nii.gz') for n in names)
    seg = pydicom.dcmread(io.BytesIO(api.get(job['files']['seg']).content))
    assert seg.Modality == 'SEG'
    actions = [e['action'] for e in Store(service.data).events(job['id'])]
    assert actions[0] == 'job submitted' and 'job done (predict)' in actions and 'downloaded RTSTRUCT.dcm' in actions


def _save(path, content: bytes) -> str:
    path.write_bytes(content)
    return str(path)


def test_nrrd_and_mha_are_taken_and_the_labels_keep_their_grid(service, tmp_path):
    image = read_ct_series(service.cts[1]).image
    api = client(service)
    for ending in ('.nrrd', '.mha', '.nii.gz'):
        path = str(tmp_path / f'ct{ending}')
        sitk.WriteImage(image, path, useCompression=True)
        answer = submit(api, [path])
        assert answer.status_code == 201, answer.text
        job = wait(api, answer.json()['id'])
        assert job['state'] == 'done' and job['files']['rtstruct'] is None, job
        labels = sitk.ReadImage(_save(tmp_path / f'labels{ending}.nii.gz', api.get(job['files']['labels']).content))
        assert labels.GetSize() == image.GetSize()
        assert np.allclose(labels.GetOrigin(), image.GetOrigin()) and np.allclose(labels.GetSpacing(),
                                                                                  image.GetSpacing())


def test_margins_are_reapplied_without_running_the_network(service, tmp_path):
    api = client(service)
    job = wait(api, submit(api, [service.dicom_zip], ['PTV=GTV+3']).json()['id'])
    assert job['state'] == 'done'
    before = {s['name']: s['volume_cc'] for s in job['structures']}
    labels_before = api.get(job['files']['labels']).content
    answer = api.post(f"/api/jobs/{job['id']}/margins", json={'margins': ['CTV=GTV+5@Liver', 'PTV=CTV+8']})
    assert answer.status_code == 202, answer.text
    again = wait(api, job['id'])
    assert again['state'] == 'done' and again['task'] == 'margins' and 'predicting' not in again['timings_s']
    after = {s['name']: s['volume_cc'] for s in again['structures']}
    assert set(after) == {'Liver', 'GTV', 'CTV', 'PTV'} and after['GTV'] == before['GTV']
    if after['GTV'] > 0:
        assert after['PTV'] > before['PTV']
    assert api.get(again['files']['labels']).content == labels_before  # the network's output is untouched
    bad = api.post(f"/api/jobs/{job['id']}/margins", json={'margins': ['CTV=Tumour+5']})
    assert bad.status_code == 422 and 'Tumour' in bad.json()['detail']


def test_users_see_only_their_own_jobs(service):
    alice, bob = service.add_user('alice'), service.add_user('bob')
    a, b = client(service, alice), client(service, bob)
    job = wait(a, submit(a, [service.dicom_zip]).json()['id'])
    assert job['owner'] == 'alice' and job['state'] == 'done'
    assert job['id'] not in [j['id'] for j in b.get('/api/jobs').json()['jobs']]
    for method, path in (('GET', ''), ('GET', '/files/RTSTRUCT.dcm'), ('GET', '/files/image.nii.gz'),
                         ('GET', '/structures/0.nii.gz'), ('POST', '/margins'), ('DELETE', '')):
        answer = b.request(method, f"/api/jobs/{job['id']}{path}", json={'margins': []} if method == 'POST' else None)
        assert answer.status_code == 404, (method, path, answer.status_code)
    assert job['id'] in [j['id'] for j in client(service).get('/api/jobs').json()['jobs']]  # the admin sees all
    anonymous = httpx.get(f"{service.url}/api/jobs/{job['id']}")
    assert anonymous.status_code == 401 and anonymous.headers['www-authenticate'] == 'Bearer'
    assert client(service, alice[:-2] + 'xx').get('/api/jobs').status_code == 401
    assert client(service, 'nrs_0_0').get('/api/me').status_code == 401
    assert a.delete(f"/api/jobs/{job['id']}").status_code == 204
    assert a.get(f"/api/jobs/{job['id']}").status_code == 404
    assert job['id'] not in job_folders(service)


def _nifti_bytes(array: np.ndarray) -> bytes:
    import nibabel
    return gzip.compress(nibabel.Nifti1Image(array, np.eye(4)).to_bytes())


def test_bad_uploads_are_refused_and_nothing_is_queued(service, tmp_path):
    api = client(service)
    jobs_before, folders_before = len(api.get('/api/jobs').json()['jobs']), job_folders(service)
    good = tmp_path / 'ct.nii.gz'
    good.write_bytes(_nifti_bytes(np.zeros((40, 40, 12), np.int16)))
    truncated = tmp_path / 'truncated.nii.gz'
    truncated.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    four_d = tmp_path / 'four_d.nii.gz'
    four_d.write_bytes(_nifti_bytes(np.zeros((20, 20, 8, 2), np.int16)))
    png = tmp_path / 'slice.png'
    sitk.WriteImage(sitk.Image(32, 32, sitk.sitkUInt8), str(png))
    escape = tmp_path / 'escape.zip'
    with zipfile.ZipFile(escape, 'w') as z:
        z.writestr('../../evil.dcm', b'x')
    bomb = tmp_path / 'bomb.zip'
    with zipfile.ZipFile(bomb, 'w', zipfile.ZIP_DEFLATED) as z:
        z.writestr('a.dcm', b'\0' * (60 << 20))  # 60 MB of zeros: a few tens of kB zipped, over the 40 MB limit
    assert bomb.stat().st_size < 1 << 20
    large = tmp_path / 'large.nii.gz'
    large.write_bytes(os.urandom(9 << 20))  # over the 8 MB upload limit
    two_series = tmp_path / 'two.zip'
    with zipfile.ZipFile(two_series, 'w') as z:
        for k, folder in enumerate(service.cts[:2]):
            for name in os.listdir(folder):
                z.write(os.path.join(folder, name), f'{k}/{name}')
    cases = [(truncated, 422, 'truncated'), (four_d, 422, '4D'), (png, 415, '2D'), (escape, 422, "'..'"),
             (bomb, 413, 'unpacks to'), (large, 413, 'at most'), (two_series, 422, '2 CT series')]
    for path, status, words in cases:
        answer = submit(api, [str(path)])
        assert answer.status_code == status and words in answer.json()['detail'], (path.name, answer.text)
        assert str(service.data) not in answer.json()['detail'], 'server paths must not leak into messages'
    no_file = api.post('/api/jobs', files=[('margin', (None, b'PTV=GTV+3'))])  # multipart without a file
    assert no_file.status_code == 400 and 'no file' in no_file.json()['detail']
    assert api.post('/api/jobs', json={}).status_code == 415
    chunked = httpx.post(f'{service.url}/api/jobs', headers={'Authorization': f'Bearer {service.token}'},
                         content=iter([b'--x\r\n']))
    assert chunked.status_code == 411
    assert len(api.get('/api/jobs').json()['jobs']) == jobs_before
    assert job_folders(service) == folders_before


def test_a_killed_service_recovers_its_running_job(service_model, tmp_path):
    """SIGKILL mid-prediction, restart on the same data folder: the job is re-queued and finishes, or fails with
    the reason; never left running."""
    from nnunet_ras.dicom.phantom import write_phantom_patients
    from nnunet_ras.phantom import PhantomGeometry
    ws, model, _ = service_model
    big = write_phantom_patients(str(tmp_path / 'big'), 1, seed=9, with_rtstruct=False,
                                 geometry=PhantomGeometry((48, 160, 160), (2.0, 0.6, 0.6)))[0]
    archive = zip_folder(os.path.join(big, 'CT'), str(tmp_path / 'big.zip'))
    server = ServiceProcess(ws.env, str(tmp_path / 'data'), model, '--heartbeat_s', '0.5', '--stale_after_s', '3').start()
    try:
        api = client(server)
        job_id = submit(api, [archive]).json()['id']
        running = wait(api, job_id, 300, states=('predicting', 'done', 'failed'))
        assert running['state'] == 'predicting', 'the job should take long enough to be killed mid-prediction'
        server.stop(kill=True)
        assert Store(server.data).job(job_id).state == 'predicting'  # what a dead worker leaves behind
        server.start()
        job = wait(api, job_id, 300)
        assert job['state'] == 'done' and job['attempts'] == 2, job
        assert any(e['action'] == 'job queued after a stale heartbeat' for e in Store(server.data).events(job_id))
    finally:
        server.stop()


def test_two_workers_share_a_redis_queue(service_model, tmp_path):
    import subprocess
    ws, model, cts = service_model
    assert shutil.which('redis-server'), 'redis-server is missing: run make install (Debian package redis-server)'
    port = free_port()
    redis = subprocess.Popen(['redis-server', '--port', str(port), '--bind', '127.0.0.1', '--save', '',
                              '--appendonly', 'no', '--dir', str(tmp_path)], stdout=subprocess.DEVNULL)
    queue = f'redis://127.0.0.1:{port}/0'
    data = str(tmp_path / 'data')
    server = ServiceProcess(ws.env, data, model, '--queue', queue, '--no_worker', '--disable_tta').start()
    workers = [subprocess.Popen(['nnunet-ras', 'worker', '--data', data, '--queue', queue, '-device', 'cpu'],
                                env=ws.env, stdout=open(str(tmp_path / f'worker{i}.log'), 'w'),
                                stderr=subprocess.STDOUT) for i in range(2)]
    try:
        api = client(server)
        archive = zip_folder(cts[2], str(tmp_path / 'ct.zip'))
        ids = [submit(api, [archive]).json()['id'] for _ in range(6)]
        jobs = [wait(api, i, 300) for i in ids]
        assert all(j['state'] == 'done' for j in jobs), jobs
        ran_by = {Store(data).job(i).worker.split(':')[1] for i in ids}
        assert ran_by == {str(w.pid) for w in workers}, ran_by
    finally:
        server.stop()
        for w in workers:
            w.terminate()
            w.wait(30)
        redis.terminate()
        redis.wait(30)
