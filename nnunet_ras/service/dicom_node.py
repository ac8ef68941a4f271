"""The DICOM node: the TPS or PACS pushes a CT series (C-STORE), the node contours it and pushes the RTSTRUCT (and
SEG) back, with no one at a shell. This is the deployment of RadDeploy, platipy's DICOM listener or the
InnerEye-Gateway, on the contouring service's own job queue and job table.

- Receiving (pynetdicom Storage SCP, Verification for C-ECHO): associations from calling AE titles the rules do not
  name are rejected and logged. Each instance is written by pynetdicom to a temporary file (never a study in
  memory) and moved into ``DATA/dicom_incoming/<series>/``; a series is complete when the association that brought
  it is released, or ``quiet_s`` after its last instance (an aborted association, a sender that sends a series over
  several associations).
- A complete series is matched against the rules (model, margins, destinations), checked as ``predict`` checks a
  series (gantry tilt, missing slices, identity ...) and becomes a job of the service (source ``dicom:<AE>``, owner
  from the rules); a series that cannot be contoured becomes a refused job whose error is the reason, and nothing is
  sent for it. The received files live in the job's folder, so they go when the job goes.
- Delivery: when a worker finishes a node's job, the node's delivery thread sends the RTSTRUCT (and SEG) by C-STORE
  to each destination, retrying with exponential backoff; a delivery that ran out of attempts stays visible with
  the reason and can be re-sent from the page or ``POST /api/jobs/{id}/send``.
"""
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Dict, List

import pydicom
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import (CTImageStorage, RTStructureSetStorage, SegmentationStorage, Verification)
from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ExplicitVRLittleEndian,
                         ImplicitVRLittleEndian)

from nnunet_ras._io import write_json_atomically
from nnunet_ras.service.jobs import JobQueue, job_folder, result_folder
from nnunet_ras.service.models import ServedModel
from nnunet_ras.service.rules import DEFAULT_OWNER, NodeRules, Peer
from nnunet_ras.service.store import Job, Store, new_job_id
from nnunet_ras.service.uploads import UploadRefused, check_dicom_input

log = logging.getLogger('nnunet_ras.service.dicom')
# pydicom reads these without extra pixel-data plugins; a sender holding compressed images transcodes to one of them
RECEIVED_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                     ExplicitVRBigEndian]
# what we write: RTSTRUCTs in implicit VR (a contour's DS values may exceed explicit VR's 64 kB length), SEGs in
# explicit VR; a file converted to the other would lose such a contour
SENT_SYNTAXES = [ImplicitVRLittleEndian, ExplicitVRLittleEndian]
HEADER_TAGS = ['SOPInstanceUID', 'SeriesInstanceUID', 'Modality', 'SeriesDescription', 'BodyPartExamined',
               'PatientID']
SERIES_FILE = 'series.json'
MAX_BACKOFF_S = 300.0


@dataclass
class NodeSettings:
    rules: NodeRules
    models: Dict[str, ServedModel]  # the rules' model names ('default': the service's model)
    ae_title: str = 'NNUNET_RAS'
    host: str = '127.0.0.1'
    port: int = 11112
    quiet_s: float = 10.0
    send_attempts: int = 8
    send_backoff_s: float = 5.0
    connection_timeout_s: float = 10.0


@dataclass
class _Series:
    key: str
    meta: dict  # calling AE, address, series UID, matched values, patient
    count: int = 0
    last: float = field(default_factory=time.time)
    associations: set = field(default_factory=set)  # the open associations sending it
    complete: bool = False


def _key(series_uid: str) -> str:
    return hashlib.sha1(series_uid.encode()).hexdigest()[:20]


class Inbox:
    """Received instances, grouped by series in ``DATA/dicom_incoming``; knows when a series is complete. A series
    folder left by a node that stopped is taken up again on start (complete after the quiet time)."""

    def __init__(self, data_folder: str, quiet_s: float):
        self.folder = os.path.join(data_folder, 'dicom_incoming')
        self.quiet_s = quiet_s
        self.lock = threading.Lock()
        self.series: Dict[str, _Series] = {}
        os.makedirs(self.folder, exist_ok=True)
        for name in os.listdir(self.folder):
            meta_path = os.path.join(self.folder, name, SERIES_FILE)
            if name.startswith('.') or not os.path.isfile(meta_path):
                continue
            with open(meta_path) as f:
                meta = json.load(f)
            count = len([n for n in os.listdir(os.path.join(self.folder, name)) if n.endswith('.dcm')])
            self.series[name] = _Series(name, meta, count)
            log.info('series %s (%d files) left by an earlier run: taken up again', meta['series_uid'], count)

    def add(self, temporary_path: str, header: pydicom.Dataset, calling_ae: str, address: str,
            association: int) -> None:
        """Moves a received instance into its series' folder (replacing an earlier copy of the same instance)."""
        key = _key(str(header.SeriesInstanceUID))
        folder = os.path.join(self.folder, key)
        with self.lock:
            series = self.series.get(key)
            if series is None:
                os.makedirs(folder, exist_ok=True)
                meta = {'calling_ae': calling_ae, 'address': address, 'series_uid': str(header.SeriesInstanceUID),
                        'values': {'ae_title': calling_ae, 'modality': str(header.get('Modality', '')),
                                   'series_description': str(header.get('SeriesDescription', '')),
                                   'body_part': str(header.get('BodyPartExamined', ''))},
                        'patient': str(header.get('PatientID', '')) or None, 'received': time.time()}
                write_json_atomically(os.path.join(folder, SERIES_FILE), meta)
                series = self.series[key] = _Series(key, meta)
            series.associations.add(association)
            series.last = time.time()
        target = os.path.join(folder, hashlib.sha1(str(header.SOPInstanceUID).encode()).hexdigest() + '.dcm')
        shutil.move(temporary_path, target + '.part')  # a rename on one file system; else copied, then renamed
        os.replace(target + '.part', target)
        with self.lock:
            series.count += 1
            series.last = time.time()

    def association_ended(self, association: int, released: bool) -> None:
        """A released association completes the series it sent (unless another association is still sending one);
        an aborted one leaves them to the quiet time."""
        with self.lock:
            for series in self.series.values():
                if association in series.associations:
                    series.associations.discard(association)
                    if released and not series.associations:
                        series.complete = True

    def take_complete(self, now: float) -> List[tuple]:
        """The complete series as (folder, meta, instance count); their folders are renamed out of the inbox, so an
        instance arriving later starts a new series."""
        taken = []
        with self.lock:
            for key, series in list(self.series.items()):
                if series.complete or (now - series.last >= self.quiet_s and not series.associations) or \
                        now - series.last >= max(self.quiet_s, 600):  # a sender that hung up without releasing
                    del self.series[key]
                    target = os.path.join(self.folder, f'.{key}.{new_job_id()}')
                    os.replace(os.path.join(self.folder, key), target)
                    taken.append((target, series.meta, series.count))
        return taken


class DicomNode:
    """The Storage SCP, the thread that turns complete series into jobs and the delivery thread."""

    def __init__(self, settings: NodeSettings, store: Store, queue: JobQueue):
        self.settings, self.store, self.queue = settings, store, queue
        self.data_folder = queue.settings.data_folder
        self.inbox = Inbox(self.data_folder, settings.quiet_s)
        self.stopped = threading.Event()
        self.server = None
        self.threads: List[threading.Thread] = []

    # receiving
    def _application_entity(self) -> AE:
        ae = AE(ae_title=self.settings.ae_title)
        ae.add_supported_context(CTImageStorage, RECEIVED_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.require_calling_aet = list(self.settings.rules.senders)  # others: rejected by pynetdicom (logged below)
        ae.maximum_pdu_size = 0  # no limit: fewer, larger PDUs
        return ae

    def _on_requested(self, event) -> None:
        """Logs every association request; aborts one from a listed AE title but not from its listed host."""
        calling = event.assoc.requestor.primitive.calling_ae_title.strip()
        address = event.assoc.requestor.address
        sender = self.settings.rules.senders.get(calling)
        if sender is not None and sender.host and sender.host != address:
            self._refuse_association(calling, address, f"not from {sender.host}, the host the rules give it")
            event.assoc.abort()

    def _on_rejected(self, event) -> None:
        calling = (event.assoc.requestor.ae_title or '').strip()
        self._refuse_association(calling, event.assoc.requestor.address, 'not a sender in the rules')

    def _refuse_association(self, calling: str, address: str, reason: str) -> None:
        log.warning('association from AE %r at %s refused: %s', calling, address, reason)
        self.store.log('dicom', 'association refused', detail=f"AE {calling!r} at {address}: {reason}")

    def _on_store(self, event) -> int:
        path = str(event.dataset_path)
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
        except Exception as e:
            log.warning('C-STORE from %s: unreadable instance (%s)', event.assoc.requestor.ae_title, e)
            return 0xC000  # cannot understand
        if not header.get('SeriesInstanceUID') or not header.get('SOPInstanceUID'):
            log.warning('C-STORE from %s: instance without SeriesInstanceUID / SOPInstanceUID refused',
                        event.assoc.requestor.ae_title)
            return 0xA900  # data set does not match SOP class
        try:
            self.inbox.add(path, header, event.assoc.requestor.ae_title.strip(), event.assoc.requestor.address,
                           id(event.assoc))
        except OSError as e:
            log.error('C-STORE: cannot store an instance (%s)', e)
            return 0xA700  # out of resources
        return 0x0000

    def _on_released(self, event) -> None:
        self.inbox.association_ended(id(event.assoc), released=True)

    def _on_aborted(self, event) -> None:
        self.inbox.association_ended(id(event.assoc), released=False)

    # series -> jobs
    def _collect(self) -> None:
        while not self.stopped.wait(0.25):
            for folder, meta, count in self.inbox.take_complete(time.time()):
                try:
                    self.make_job(folder, meta, count)
                except Exception:  # one bad series must not stop the node
                    log.error('series %s could not become a job:\n%s', meta.get('series_uid'),
                              traceback.format_exc())

    def make_job(self, folder: str, meta: dict, count: int) -> Job:
        """A job for a complete series (or a refused one that says why); the files move into the job's folder."""
        rules, values = self.settings.rules, meta['values']
        calling = meta['calling_ae']
        sender = rules.senders.get(calling)
        owner = sender.owner if sender else DEFAULT_OWNER
        name = f"{values['series_description'] or values['modality'] or 'series'} ({count} files from {calling})"
        job_id = new_job_id()
        input_folder = os.path.join(job_folder(self.data_folder, job_id), 'input')
        os.makedirs(input_folder)
        os.replace(folder, os.path.join(input_folder, 'dicom'))
        source = f"dicom:{calling}"
        received = {'series_uid': meta['series_uid'], 'calling_ae': calling, 'address': meta['address']}
        rule = rules.route(values)
        if rule is None:
            return self._refused(owner, source, name, meta, job_id, rules.explain_no_rule(values), received)
        model = self.settings.models[rule.model]
        try:
            stored = check_dicom_input(input_folder, model.info, name)
        except UploadRefused as e:
            return self._refused(owner, source, name, meta, job_id, f"{e}; nothing was sent", received)
        peers = rules.destinations_for(rule, calling, meta['address'])
        params = model.job_params(stored.predict_path, stored.view_path, rule.margins, stored.warnings,
                                  deliver=[p.as_dict() for p in peers], send_seg=rule.seg,
                                  received={**received, 'rule': rule.index, 'model': rule.model})
        job = self.store.add_job(owner, source, 'dicom', name, stored.patient or meta.get('patient'), params, job_id)
        self.queue.enqueue(job.id)
        log.info('series %s from %s: job %s (rule %d, model %s)', meta['series_uid'], calling, job.id, rule.index,
                 rule.model)
        return job

    def _refused(self, owner: str, source: str, name: str, meta: dict, job_id: str, reason: str,
                 received: dict) -> Job:
        log.warning('series %s from %s refused: %s', meta['series_uid'], meta['calling_ae'], reason)
        # refused before the viewer's image was written: the job has none
        return self.store.add_job(owner, source, 'dicom', name, meta.get('patient'),
                                  {'view': None, 'received': received}, job_id, refused=reason)

    # delivery
    def _deliver_due(self) -> None:
        for job in self.store.interrupted_deliveries():  # a node that stopped mid-send: sent again
            self.store.set_delivery(job.id, {**job.delivery, 'state': 'pending', 'next': time.time()}, 'sending')
        while not self.stopped.wait(0.5):
            try:
                for job in self.store.due_deliveries(time.time()):
                    if self.store.take_delivery(job):
                        self.deliver(self.store.job(job.id))
            except Exception:
                log.error('delivery failed:\n%s', traceback.format_exc())

    def deliver(self, job: Job) -> dict:
        """Sends a done job's RTSTRUCT (and SEG) to each destination not yet reached; records the outcome."""
        delivery = dict(job.delivery)
        errors = []
        try:
            files = self._result_files(job)
        except (OSError, IndexError, KeyError, ValueError) as e:
            files, errors = [], [f"its results cannot be read ({e})"]
        for peer in job.params['deliver'] if files else []:
            if peer['name'] in delivery['sent']:
                continue
            try:
                self.send(Peer(**peer), files)
                delivery['sent'] = delivery['sent'] + [peer['name']]
                self.store.log(job.owner, 'results sent', job.id, f"to {peer['ae_title']} at {peer['host']}:"
                                                                  f"{peer['port']} ({len(files)} files)")
            except (OSError, RuntimeError) as e:
                errors.append(f"{peer['ae_title']} at {peer['host']}:{peer['port']}: {e}")
        delivery['attempts'] += 1
        if not errors:
            delivery.update(state='sent', error=None, next=None, finished=time.time())
        elif delivery['attempts'] >= self.settings.send_attempts:
            delivery.update(state='failed', next=None,
                            error=f"not delivered after {delivery['attempts']} attempts: {'; '.join(errors)} "
                                  f"(send again from the page or POST /api/jobs/{job.id}/send)")
            self.store.log(job.owner, 'delivery failed', job.id, delivery['error'])
        else:
            wait = min(self.settings.send_backoff_s * 2 ** (delivery['attempts'] - 1), MAX_BACKOFF_S)
            delivery.update(state='pending', next=time.time() + wait,
                            error=f"attempt {delivery['attempts']} failed: {'; '.join(errors)}; next try in "
                                  f"{wait:.0f} s")
            log.warning('job %s: %s', job.id, delivery['error'])
        self.store.set_delivery(job.id, delivery, 'sending')
        return delivery

    def _result_files(self, job: Job) -> List[str]:
        folder = result_folder(self.data_folder, job.id)
        reports = [n for n in os.listdir(folder) if n.endswith('_report.json')]
        with open(os.path.join(folder, reports[0])) as f:
            case = json.load(f)['case']
        files = [os.path.join(folder, f'{case}_RTSTRUCT.dcm')]
        seg = os.path.join(folder, f'{case}_SEG.dcm')
        if job.params.get('send_seg') and os.path.isfile(seg):  # no SEG is written when every structure is empty
            files.append(seg)
        return files

    def send(self, peer: Peer, files: List[str]) -> None:
        """C-STORE of ``files`` to ``peer`` in one association; raises RuntimeError / OSError saying what failed."""
        ae = AE(ae_title=self.settings.ae_title)
        ae.connection_timeout = self.settings.connection_timeout_s
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        for sop_class in (RTStructureSetStorage, SegmentationStorage):
            for syntax in SENT_SYNTAXES:  # one context per syntax: each file goes as written, never converted
                ae.add_requested_context(sop_class, syntax)
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
        if not assoc.is_established:
            raise RuntimeError('association rejected' if assoc.is_rejected else 'association aborted' if
                               assoc.is_aborted else 'no association (is it running and listening?)')
        try:
            for path in files:
                status = assoc.send_c_store(path)
                code = status.get('Status') if status else None
                if code is None or (code != 0x0000 and not 0xB000 <= code <= 0xBFFF):
                    raise RuntimeError(f"C-STORE of {os.path.basename(path)} answered " +
                                       (f"status 0x{code:04X}" if code is not None else 'nothing (timeout)'))
        finally:
            if assoc.is_established:
                assoc.release()

    # running
    def start(self) -> 'DicomNode':
        _config.STORE_RECV_CHUNKED_DATASET = True  # each instance straight to a temporary file, never in memory
        handlers = [(evt.EVT_REQUESTED, self._on_requested), (evt.EVT_REJECTED, self._on_rejected),
                    (evt.EVT_C_STORE, self._on_store), (evt.EVT_RELEASED, self._on_released),
                    (evt.EVT_ABORTED, self._on_aborted)]
        self.server = self._application_entity().start_server((self.settings.host, self.settings.port), block=False,
                                                               evt_handlers=handlers)
        for target, name in ((self._collect, 'dicom series'), (self._deliver_due, 'dicom delivery')):
            thread = threading.Thread(target=target, daemon=True, name=name)
            thread.start()
            self.threads.append(thread)
        log.info('DICOM node %s listening on %s:%d (senders: %s)', self.settings.ae_title, self.settings.host,
                 self.settings.port, ', '.join(self.settings.rules.senders))
        return self

    def stop(self) -> None:
        self.stopped.set()
        if self.server is not None:
            self.server.shutdown()
            self.server = None
        for thread in self.threads:
            thread.join(10)
