"""The HTTP side of the service: a JSON API (described at ``/openapi.json``) and the web page that uses only it.

Every API call needs ``Authorization: Bearer <token>`` (a header, never a cookie, so there is no CSRF surface);
a user sees only their own jobs (another user's job id answers 404, as an unknown one does), an admin sees all.
Prediction never runs in a request: a submission is stored, checked and queued, and a worker runs it.
"""
import datetime
import functools
import json
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import SimpleITK as sitk
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from nnunet_ras._io import read_image
from nnunet_ras.errors import UserInputError
from nnunet_ras.service.dicom_node import DicomNode, NodeSettings
from nnunet_ras.service.models import ServedModel, checked_margin_specs
from nnunet_ras.service.jobs import JobQueue, QueueSettings, Recovery, job_folder, result_folder
from nnunet_ras.service.store import Job, Store, User, new_delivery, new_job_id
from nnunet_ras.service.uploads import Limits, UploadRefused, store_upload

log = logging.getLogger('nnunet_ras.service')
STATIC = os.path.join(os.path.dirname(__file__), 'static')
NIIVUE = os.path.join(STATIC, 'vendor', 'niivue.umd.js')
PALETTE = [(0, 200, 0), (230, 200, 0), (200, 0, 200), (0, 200, 200), (120, 80, 255), (255, 120, 60)]
DOWNLOADS = {'labels.nii.gz': '{case}.nii.gz', 'RTSTRUCT.dcm': '{case}_RTSTRUCT.dcm', 'SEG.dcm': '{case}_SEG.dcm',
             'report.json': '{case}_report.json'}


@dataclass
class ServiceSettings:
    queue: QueueSettings
    model: ServedModel
    limits: Limits = field(default_factory=Limits)
    in_process_worker: bool = True
    dicom: Optional[NodeSettings] = None  # also run the DICOM node (serve --dicom_port)


class MarginsRequest(BaseModel):
    margins: List[str]


def _iso(t: Optional[float]) -> Optional[str]:
    return None if t is None else datetime.datetime.fromtimestamp(t).astimezone().isoformat(timespec='seconds')


@functools.lru_cache(maxsize=512)
def _read_report(path: str, mtime_ns: int) -> dict:
    """A job's report, parsed once per version of the file (callers must not change it)."""
    with open(path) as f:
        return json.load(f)


def _checked_margins(specs: List[str], structures: List[str]) -> List[str]:
    """A bad margin spec is a 422 now, not a failed job later."""
    try:
        return checked_margin_specs(specs, structures)
    except UserInputError as e:
        raise HTTPException(422, str(e)) from None


def _delivery_view(job: Job) -> Optional[dict]:
    """Where a DICOM node's job sends its results, and how far that got."""
    if not job.params.get('deliver'):
        return None
    delivery = job.delivery or {'state': 'waiting for the job', 'attempts': 0, 'error': None, 'sent': []}
    return {'state': delivery['state'], 'attempts': delivery['attempts'], 'error': delivery.get('error'),
            'next_try': _iso(delivery.get('next')) if delivery['state'] == 'pending' else None,
            'destinations': [{**peer, 'sent': peer['name'] in delivery['sent']} for peer in job.params['deliver']],
            'seg': bool(job.params.get('send_seg'))}


def create_app(settings: ServiceSettings) -> FastAPI:
    """The service for ``settings``; its startup runs job recovery and, unless ``in_process_worker`` is off, one
    in-process worker."""
    store = Store(settings.queue.data_folder)
    queue = JobQueue(settings.queue, store)
    model = settings.model
    app = FastAPI(title='nnunet-ras contouring service', version='1', docs_url=None, redoc_url=None,
                  description='Upload a CT, follow the job, review and download the contours (RTSTRUCT, SEG, '
                              'NIfTI). Every call needs an API token in the Authorization header.')
    bearer = HTTPBearer(auto_error=False, description='the token that `nnunet-ras serve-admin add-user` printed')
    running = {}

    @app.on_event('startup')
    def start() -> None:
        recovery = Recovery(queue)
        recovery.start()
        running['recovery'] = recovery
        if settings.in_process_worker:
            consumer = queue.consumer()
            consumer.start()
            running['consumer'] = consumer
        if settings.dicom is not None:
            running['dicom'] = DicomNode(settings.dicom, store, queue).start()

    @app.on_event('shutdown')
    def stop() -> None:
        if 'dicom' in running:
            running['dicom'].stop()
        if 'recovery' in running:
            running['recovery'].stopped.set()
        if 'consumer' in running:
            running['consumer'].stop(graceful=False)

    def user(credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> User:
        found = store.authenticate(credentials.credentials) if credentials else None
        if found is None:
            raise HTTPException(401, 'a valid API token is needed (Authorization: Bearer <token>)' if credentials
                                else 'missing API token (Authorization: Bearer <token>)',
                                headers={'WWW-Authenticate': 'Bearer'})
        return found

    def own_job(job_id: str, who: User = Depends(user)) -> Job:
        job = store.job(job_id)
        if job is None or (job.owner != who.name and not who.is_admin):
            raise HTTPException(404, f'no job {job_id}')
        return job

    def report(job: Job) -> Optional[dict]:
        """The finished job's report (None when there is none); the page polls every job each second, so the parsed
        file is kept until it changes."""
        folder = result_folder(settings.queue.data_folder, job.id)
        names = [n for n in os.listdir(folder) if n.endswith('_report.json')] if os.path.isdir(folder) else []
        if len(names) != 1:
            return None
        path = os.path.join(folder, names[0])
        return _read_report(path, os.stat(path).st_mtime_ns)

    def view(job: Job) -> dict:
        base = f'/api/jobs/{job.id}'
        done = job.state == 'done'
        found = report(job) if done else None
        structures = []
        for index, s in enumerate((found or {}).get('structures', [])):
            color = s.get('color') or PALETTE[index % len(PALETTE)]  # the job's own colours (--roi_colors applied)
            structures.append({'name': s['name'], 'type': s['type'], 'color': list(color),
                               'volume_cc': found['volumes_cc'].get(s['name']),
                               'url': f'{base}/structures/{index}.nii.gz'})
        files = {'image': f'{base}/files/image.nii.gz' if job.params.get('view') else None, 'labels': None,
                 'report': None, 'rtstruct': None, 'seg': None, 'zip': None}
        if found:
            case = found['case']
            folder = result_folder(settings.queue.data_folder, job.id)
            for key, name in (('labels', 'labels.nii.gz'), ('report', 'report.json'), ('rtstruct', 'RTSTRUCT.dcm'),
                              ('seg', 'SEG.dcm')):
                if os.path.isfile(os.path.join(folder, DOWNLOADS[name].format(case=case))):
                    files[key] = f'{base}/files/{name}'
            files['zip'] = f'{base}/files/results.zip'
        return {'id': job.id, 'owner': job.owner, 'state': job.state, 'position': store.queue_position(job),
                'progress': job.progress, 'message': job.message, 'error': job.error, 'task': job.task,
                'created': _iso(job.created), 'started': _iso(job.started), 'finished': _iso(job.finished),
                'source': job.source, 'attempts': job.attempts, 'timings_s': job.timings,
                'input': {'kind': job.input_kind, 'name': job.input_name, 'patient': job.patient},
                'margins': job.params.get('margins', []), 'structures': structures, 'quality_score': job.quality,
                'warnings': (found or {}).get('warnings', job.params.get('warnings', [])), 'files': files,
                'delivery': _delivery_view(job)}

    @app.get('/api/me', summary='who the token belongs to')
    def me(who: User = Depends(user)) -> dict:
        return {'name': who.name, 'role': who.role}

    @app.get('/api/model', summary='the card of the served model')
    def model_card(who: User = Depends(user)) -> dict:
        return model.card

    @app.post('/api/jobs', status_code=201, summary='submit an image (NIfTI, NRRD, MHA) or a DICOM series (zip or '
                                                     'files) with optional margins (multipart: files, margin)')
    async def submit(request: Request, who: User = Depends(user)) -> dict:
        length = request.headers.get('content-length')
        if length is None:
            raise HTTPException(411, 'send the upload with a Content-Length')
        if not length.isdigit() or int(length) > settings.limits.max_upload_bytes:
            raise HTTPException(413, f'the upload is {length} bytes; at most {settings.limits.max_upload_bytes} '
                                     f'are taken')
        if not request.headers.get('content-type', '').startswith('multipart/form-data'):
            raise HTTPException(415, 'send multipart/form-data with the file(s) as "files" and margins as "margin"')
        try:
            form = await request.form(max_files=settings.limits.max_members + 1, max_fields=100)
        except Exception as e:  # starlette's MultiPartException and friends
            raise HTTPException(400, f'the form cannot be read ({e})') from None
        try:
            margins = _checked_margins([str(v) for v in form.getlist('margin')], model.structures)
            uploads = [(f.filename, f.file) for f in form.getlist('files') if hasattr(f, 'file')]
            job_id = new_job_id()
            folder = os.path.join(job_folder(settings.queue.data_folder, job_id), 'input')
            os.makedirs(os.path.dirname(folder))
            try:
                # reading a DICOM series takes seconds: off the event loop, so other requests are answered meanwhile
                stored = await run_in_threadpool(store_upload, uploads, folder, model.info, settings.limits)
            except BaseException:
                shutil.rmtree(os.path.dirname(folder), ignore_errors=True)
                raise
        except UploadRefused as e:
            store.log(who.name, 'upload refused', detail=str(e))
            raise HTTPException(e.status, str(e)) from None
        finally:
            await form.close()
        params = model.job_params(stored.predict_path, stored.view_path, margins, stored.warnings)
        job = store.add_job(who.name, 'web', stored.kind, stored.name, stored.patient, params, job_id)
        queue.enqueue(job.id)
        return view(job)

    @app.get('/api/jobs', summary='my jobs, newest first (an admin sees everyone\'s)')
    def list_jobs(who: User = Depends(user)) -> dict:
        return {'jobs': [view(j) for j in store.jobs(None if who.is_admin else who.name)]}

    @app.get('/api/jobs/{job_id}', summary='a job: state, queue position, progress, structures, files')
    def get_job(job: Job = Depends(own_job)) -> dict:
        return view(job)

    @app.delete('/api/jobs/{job_id}', status_code=204, summary='delete a job and its files (a running job stops)')
    def delete_job(job: Job = Depends(own_job), who: User = Depends(user)) -> Response:
        store.delete_job(job.id)
        shutil.rmtree(job_folder(settings.queue.data_folder, job.id), ignore_errors=True)
        store.log(who.name, 'job deleted', job.id)
        return Response(status_code=204)

    @app.post('/api/jobs/{job_id}/margins', status_code=202,
              summary='re-apply margins to a finished job\'s label map (the network does not run again)')
    def remargin(body: MarginsRequest, job: Job = Depends(own_job), who: User = Depends(user)) -> dict:
        found = report(job) if job.state == 'done' else None
        if found is None:
            raise HTTPException(409, f'job {job.id} is {job.state}; margins can be re-applied to a finished job')
        margins = _checked_margins(body.margins, list(found['labels']))
        if not store.requeue(job.id, 'margins', 'queued (new margins)', {**job.params, 'margins': margins}):
            raise HTTPException(409, f'job {job.id} is not finished')
        store.log(who.name, 'margins re-applied', job.id, '; '.join(margins))
        queue.enqueue(job.id)
        return view(store.job(job.id))

    @app.post('/api/jobs/{job_id}/send', status_code=202,
              summary="send a DICOM node's results again to their destinations (after a failed delivery)")
    def send_again(job: Job = Depends(own_job), who: User = Depends(user)) -> dict:
        if not job.params.get('deliver'):
            raise HTTPException(409, f'job {job.id} did not come from the DICOM node: it has nowhere to send to')
        if job.state != 'done':
            raise HTTPException(409, f'job {job.id} is {job.state}; only a finished job\'s results can be sent')
        if (job.delivery or {}).get('state') == 'sending':
            raise HTTPException(409, f'job {job.id} is being sent right now')
        if not store.set_delivery(job.id, new_delivery()):
            raise HTTPException(409, f'job {job.id} changed meanwhile; try again')
        store.log(who.name, 'results to be sent again', job.id)
        return view(store.job(job.id))

    def finished_report(job: Job) -> dict:
        found = report(job) if job.state == 'done' else None
        if found is None:
            raise HTTPException(409, f'job {job.id} is {job.state}; its results are not ready')
        return found

    def _result_file(job: Job, name: str, found: dict) -> str:
        path = os.path.join(result_folder(settings.queue.data_folder, job.id),
                            DOWNLOADS[name].format(case=found['case']))
        if not os.path.isfile(path):
            raise HTTPException(404, f'job {job.id} has no {name} (written for DICOM input only)'
                                if name in ('RTSTRUCT.dcm', 'SEG.dcm') else f'job {job.id} has no {name}')
        return path

    @app.get('/api/jobs/{job_id}/files/{name}', summary='download: image.nii.gz, labels.nii.gz, RTSTRUCT.dcm, '
                                                        'SEG.dcm, report.json or results.zip')
    def download(name: str, job: Job = Depends(own_job), who: User = Depends(user)) -> Response:
        if name == 'image.nii.gz':
            if not job.params.get('view'):
                raise HTTPException(404, f'job {job.id} has no image (its input was refused before it was read)')
            return FileResponse(job.params['view'], filename=f'{job.id}_image.nii.gz',
                                media_type='application/gzip')
        if name in DOWNLOADS:
            path = _result_file(job, name, finished_report(job))
            store.log(who.name, f'downloaded {name}', job.id)
            return FileResponse(path, filename=os.path.basename(path), media_type=(
                'application/dicom' if name.endswith('.dcm') else 'application/json' if name.endswith('.json')
                else 'application/gzip'))
        if name == 'results.zip':
            found = finished_report(job)
            paths = []
            for item in DOWNLOADS:
                try:
                    paths.append(_result_file(job, item, found))
                except HTTPException as e:
                    if e.status_code != 404:
                        raise
            paths += [os.path.join(result_folder(settings.queue.data_folder, job.id), s['file'])
                      for s in found['structures'] if s['name'] not in found['labels']]
            handle, temporary = tempfile.mkstemp(suffix='.zip', dir=job_folder(settings.queue.data_folder, job.id))
            with os.fdopen(handle, 'wb') as f, zipfile.ZipFile(f, 'w', zipfile.ZIP_DEFLATED) as archive:
                for path in dict.fromkeys(paths):
                    archive.write(path, os.path.basename(path))
            store.log(who.name, 'downloaded results.zip', job.id)
            return FileResponse(temporary, filename=f"{found['case']}_results.zip", media_type='application/zip',
                                background=BackgroundTask(os.remove, temporary))
        raise HTTPException(404, f'no file {name!r} (files: image.nii.gz, {", ".join(DOWNLOADS)}, results.zip)')

    @app.get('/api/jobs/{job_id}/structures/{index}.nii.gz', summary='one structure as a 0/1 mask on the image grid')
    def structure(index: int, job: Job = Depends(own_job)) -> Response:
        found = finished_report(job)
        if not 0 <= index < len(found['structures']):
            raise HTTPException(404, f'job {job.id} has no structure {index}')
        entry = found['structures'][index]
        labels = read_image(os.path.join(result_folder(settings.queue.data_folder, job.id), entry['file']), 'label')
        mask = sitk.GetImageFromArray((labels.array == entry['value']).astype(np.uint8))
        mask.CopyInformation(labels.image)
        handle, temporary = tempfile.mkstemp(suffix='.nii.gz', dir=job_folder(settings.queue.data_folder, job.id))
        os.close(handle)
        sitk.WriteImage(mask, temporary, useCompression=True)
        return FileResponse(temporary, media_type='application/gzip', filename=f"{entry['name']}.nii.gz",
                            background=BackgroundTask(os.remove, temporary))

    @app.middleware('http')
    async def security_headers(request: Request, call_next):
        """No MIME sniffing of downloads, no framing of the page (clickjacking), no token-bearing referrers."""
        response = await call_next(request)
        response.headers.update({'X-Content-Type-Options': 'nosniff', 'X-Frame-Options': 'DENY',
                                 'Referrer-Policy': 'no-referrer'})
        if request.url.path.startswith('/api/'):  # patient data stays out of shared caches
            response.headers['Cache-Control'] = 'no-store'
        return response

    @app.exception_handler(UserInputError)
    def user_input_error(request: Request, error: UserInputError) -> JSONResponse:
        return JSONResponse({'detail': str(error)}, status_code=getattr(error, 'status', 422))

    @app.get('/', include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(os.path.join(STATIC, 'index.html'))

    app.mount('/static', StaticFiles(directory=STATIC), name='static')
    app.state.store, app.state.queue = store, queue
    return app
