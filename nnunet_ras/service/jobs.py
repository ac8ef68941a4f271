"""Running jobs: the huey queue, the task a worker runs, heartbeats and the recovery of jobs whose worker died.

The queue is huey's: ``SqliteHuey`` (one file in the data folder) by default, ``RedisHuey`` for several workers on
several machines. It carries only job ids; the job table (``store``) says what to run. A worker claims a job
(attempts + 1), beats a heartbeat while it runs, and writes its results into a hidden folder that is renamed when
complete (``predict_case``). If the heartbeat goes stale (worker killed, machine restarted), ``recover_stale`` puts
the job back into the queue once, then marks it failed with the reason: a job is never left running or lost.
"""
import logging
import os
import shutil
import socket
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Optional

from huey import RedisHuey, SqliteHuey
from huey.consumer import Consumer

from nnunet_ras.dicom.margins import parse_margin
from nnunet_ras.dicom.postprocess import Cleanup
from nnunet_ras.dicom.predict import DEFAULT_STEP_SIZE, RoiStyle, predict_case, remargin_case
from nnunet_ras.errors import UserInputError
from nnunet_ras.service.store import Job, Store, new_delivery

log = logging.getLogger('nnunet_ras.service')


@dataclass
class QueueSettings:
    data_folder: str
    queue_url: Optional[str] = None  # None: SQLite in the data folder; redis://HOST:PORT/DB
    device: str = 'cpu'
    heartbeat_s: float = 5.0
    stale_after_s: float = 60.0
    max_attempts: int = 2
    keep_days: float = 30.0


def job_folder(data_folder: str, job_id: str) -> str:
    return os.path.join(data_folder, 'jobs', job_id)


def result_folder(data_folder: str, job_id: str) -> str:
    return os.path.join(job_folder(data_folder, job_id), 'result')


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident() % 100000}"


class JobGone(Exception):
    """The job was deleted, or handed to another worker, while this one ran it."""


class _Runner:
    """Runs one claimed job, keeping its heartbeat and progress in the job table."""

    def __init__(self, store: Store, settings: QueueSettings, job: Job):
        self.store, self.settings, self.job = store, settings, job
        self.stage, self.last_write, self.gone = None, 0.0, False
        self.timings, self.stage_start = {}, time.time()
        self._stop = threading.Event()

    def _beat(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_s):
            if not self.store.update_running(self.job):
                self.gone = True
                return

    def progress(self, stage: str, fraction: float) -> None:
        now = time.time()
        if self.gone:
            raise JobGone(self.job.id)
        if stage != self.stage or now - self.last_write > 0.5:
            if stage != self.stage:
                self._close_stage(now)
                self.stage = stage
            message = f"predicting: {100 * fraction:.0f} % of tiles" if stage == 'predicting' else stage
            if not self.store.update_running(self.job, state=stage, progress=fraction, message=message,
                                             timings=self.timings):
                self.gone = True
                raise JobGone(self.job.id)
            self.last_write = now

    def _close_stage(self, now: float) -> None:
        """Adds the time since the current stage began to its timing; the next stage begins now."""
        if self.stage is not None:
            self.timings[self.stage] = round(self.timings.get(self.stage, 0) + now - self.stage_start, 2)
        self.stage_start = now

    def run(self) -> None:
        job, params = self.job, self.job.params
        beat = threading.Thread(target=self._beat, daemon=True, name=f'heartbeat {job.id}')
        beat.start()
        start = time.time()
        try:
            style = RoiStyle(names=params.get('roi_names', {}), colors={k: tuple(v) for k, v in
                                                                         params.get('roi_colors', {}).items()})
            margins = [parse_margin(m) for m in params.get('margins', [])]
            output = result_folder(self.settings.data_folder, job.id)
            if job.task == 'margins':
                self.progress('exporting', 0.0)
                report = remargin_case(output, margins, style)
            else:
                report = predict_case(params['input'], output, params['models'], params.get('folds'),
                                      params.get('checkpoint', 'checkpoint_final.pth'), self.settings.device,
                                      params.get('use_mirroring', True), style, margins,
                                      cleanup=Cleanup(params.get('postprocessing', 'auto')), overwrite=True,
                                      progress=self.progress, step_size=params.get('step_size', DEFAULT_STEP_SIZE),
                                      bf16=params.get('bf16', False),
                                      torch_resampling=params.get('torch_resampling', False),
                                      report_extra={'job': {'id': job.id, 'owner': job.owner, 'source': job.source,
                                                            'input': job.input_name},
                                                    'model_card': params.get('model_card')})
            quality = self._quality(report) if job.task == 'predict' and params.get('has_quality') else None
            self.progress('exporting', 1.0)
            self._close_stage(time.time())
            self.timings['total'] = round(time.time() - start, 2)
            # a DICOM node's job is sent on by the node's delivery thread (also after new margins)
            delivery = {'delivery': new_delivery()} if params.get('deliver') else {}
            if not self.store.finish(job, 'done', 'done', quality=quality, timings=self.timings, **delivery):
                raise JobGone(job.id)
            self.store.log(job.owner, f'job done ({job.task})', job.id, f"{self.timings['total']} s on {job.worker}")
        except JobGone:
            log.info('job %s was deleted or taken over while it ran; its partial output is dropped', job.id)
            if self.store.job(job.id) is None:
                shutil.rmtree(job_folder(self.settings.data_folder, job.id), ignore_errors=True)
        except UserInputError as e:
            self._fail(str(e))
        except Exception as e:  # a bug, or the machine (memory, disk): the job fails with the reason, the worker lives
            log.error('job %s failed:\n%s', job.id, traceback.format_exc())
            self._fail(f"internal error ({type(e).__name__}: {e}); the service log has the details")
        finally:
            self._stop.set()

    def _quality(self, report: dict) -> Optional[float]:
        """The QAM's score of the predicted contour (lower: trust it less), for a QAM trainer's model."""
        from nnunet_ras.quality.scoring import QualityModel
        params = self.job.params
        quality = QualityModel(params['models'][0], (params.get('folds') or ['0'])[0],
                               params.get('checkpoint', 'checkpoint_final.pth'))
        labels = os.path.join(result_folder(self.settings.data_folder, self.job.id), f"{report['case']}.nii.gz")
        return float(quality.score([params['view']], labels))

    def _fail(self, reason: str) -> None:
        self.store.finish(self.job, 'failed', 'failed', error=reason)
        self.store.log(self.job.owner, 'job failed', self.job.id, reason)


def run_job(store: Store, settings: QueueSettings, job_id: str) -> None:
    """The queue task: claims the job (skipped if it was deleted or already taken) and runs it."""
    job = store.claim(job_id, worker_name())
    if job is None:
        log.info('job %s: not queued any more (deleted or taken by another worker), skipped', job_id)
        return
    _Runner(store, settings, job).run()


class JobQueue:
    """The huey instance, with the task registered under a fixed name, and what the service does with it."""

    def __init__(self, settings: QueueSettings, store: Optional[Store] = None):
        self.settings = settings
        self.store = store or Store(settings.data_folder)
        if settings.queue_url:
            if not settings.queue_url.startswith(('redis://', 'rediss://', 'unix://')):
                raise UserInputError(f"--queue {settings.queue_url}: expected redis://HOST:PORT/DB (or leave it out "
                                     f"for SQLite in the data folder)")
            self.huey = RedisHuey('nnunet_ras', url=settings.queue_url, results=False)
        else:
            self.huey = SqliteHuey('nnunet_ras', filename=os.path.join(settings.data_folder, 'queue.sqlite3'),
                                   results=False)

        @self.huey.task(name='nnunet_ras.run_job')
        def run(job_id: str) -> None:
            run_job(self.store, settings, job_id)

        self._task = run

    def enqueue(self, job_id: str) -> None:
        self._task(job_id)

    def recover_stale(self) -> None:
        """Re-queues (once) or fails the jobs whose worker stopped beating; removes expired jobs."""
        now = time.time()
        for job in self.store.stale_jobs(now - self.settings.stale_after_s):
            if self.store.recover(job, self.settings.max_attempts) == 'queued':
                self.enqueue(job.id)
        for job in self.store.expired_jobs(now - self.settings.keep_days * 86400):
            if self.store.delete_job(job.id):
                shutil.rmtree(job_folder(self.settings.data_folder, job.id), ignore_errors=True)
                self.store.log('service', 'job expired', job.id)

    def consumer(self, workers: int = 1, handle_signals: bool = False) -> Consumer:
        """huey's consumer with ``workers`` threads; inside ``serve`` (``handle_signals`` off) uvicorn owns SIGINT and
        SIGTERM and stops it."""
        return (Consumer if handle_signals else _QuietConsumer)(self.huey, workers=workers, worker_type='thread',
                                                                 periodic=False, check_worker_health=True,
                                                                 max_delay=1.0)  # an idle SQLite queue: polled 1/s


class _QuietConsumer(Consumer):
    """huey's consumer without its signal handlers."""

    def _set_signal_handlers(self):
        pass


class Recovery(threading.Thread):
    """Calls ``recover_stale`` every heartbeat interval until stopped."""

    def __init__(self, queue: JobQueue):
        super().__init__(daemon=True, name='job recovery')
        self.queue, self.stopped = queue, threading.Event()

    def run(self) -> None:
        while True:
            try:
                self.queue.recover_stale()
            except Exception:  # a locked database or a full disk must not end recovery for good
                log.error('job recovery failed:\n%s', traceback.format_exc())
            if self.stopped.wait(self.queue.settings.heartbeat_s):
                return
