"""The DICOM node against a real PACS: Debian's Orthanc, started on loopback by the fixture, pushes CT series to
``nnunet-ras serve --dicom_port``, which contours them with a real trained model and pushes the RTSTRUCT / SEG back
into Orthanc. The returned objects are fetched from Orthanc and read back with plastimatch and rt-utils, readers the
node does not use to write them.
"""
import glob
import io
import os
import signal
import subprocess
import time
from types import SimpleNamespace

import httpx
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from scipy import ndimage

from conftest import SHARED_DATA
from nnunet_ras.dicom.readers import plastimatch_masks
from nnunet_ras.dicom.series import label_on_series_grid, read_ct_series
from nnunet_ras.evaluation.metrics import dice
from nnunet_ras.service.launch import OrthancProcess, ServiceProcess, dicom_echo, free_port
from nnunet_ras.service.rules import RulesError, load_rules
from nnunet_ras.service.store import Store

pytestmark = pytest.mark.e2e
ABDOMEN_CT = os.path.join(SHARED_DATA, 'ct_abdomen_example', 'example_ct_dicom')
RULES = """
[senders.ORTHANC]
host = "127.0.0.1"
port = {orthanc_port}
owner = "physics"

[destinations.LATE]
ae_title = "LATE"
host = "127.0.0.1"
port = {late_port}

[[rules]]                     # a series described as 'late' goes to a destination that is not up yet
series_description = "*late*"
send_to = ["LATE"]

[[rules]]
ae_title = "ORTHANC"
modality = "CT"
margins = ["CTV=GTV+5@Liver", "PTV=CTV+5"]
send_to = ["sender"]
seg = true
"""


@pytest.fixture(scope='module')
def node(service_model, tmp_path_factory):
    """Orthanc (AE ORTHANC) that knows the node as modality 'node', and ``serve`` with the DICOM node on."""
    ws, model, cts = service_model
    root = tmp_path_factory.mktemp('dicom_node')
    node_port, late_port = free_port(), free_port()
    orthanc = OrthancProcess(str(root / 'orthanc'), 'ORTHANC', {'node': ('NNUNET_RAS', '127.0.0.1', node_port)})
    orthanc.start()
    rules = root / 'rules.toml'
    rules.write_text(RULES.format(orthanc_port=orthanc.dicom_port, late_port=late_port))
    server = ServiceProcess(ws.env, str(root / 'data'), model, '--disable_tta', '--dicom_port', str(node_port),
                            '--rules', str(rules), '--quiet_s', '3', '--send_backoff_s', '1', '--send_attempts', '40')
    try:
        server.start()
        physics = server.add_user('physics')
        yield SimpleNamespace(orthanc=orthanc, server=server, node_port=node_port, late_port=late_port, root=root,
                              cts=cts, rules=str(rules), env=ws.env, model=model,
                              api=httpx.Client(base_url=server.url, timeout=60,
                                               headers={'Authorization': f'Bearer {server.token}'}),
                              physics=httpx.Client(base_url=server.url, timeout=60,
                                                   headers={'Authorization': f'Bearer {physics}'}))
    finally:
        server.stop()
        orthanc.stop()


def upload(orthanc: OrthancProcess, files) -> str:
    """Puts DICOM files into Orthanc; returns the Orthanc id of their series."""
    series = set()
    for path in files:
        with open(path, 'rb') as f:
            answer = httpx.post(orthanc.url + '/instances', content=f.read(), timeout=60)
        answer.raise_for_status()
        series.add(answer.json()['ParentSeries'])
    assert len(series) == 1
    return series.pop()


def send_to_node(orthanc: OrthancProcess, series_ids) -> None:
    """Orthanc C-STOREs the series to the node in one association (and waits until it is done)."""
    answer = httpx.post(f'{orthanc.url}/modalities/node/store', json={'Resources': list(series_ids),
                                                                      'Synchronous': True}, timeout=300)
    assert answer.status_code == 200, answer.text


def rtstructs(orthanc: OrthancProcess, modality: str = 'RTSTRUCT') -> list:
    """Every object of ``modality`` in Orthanc, as pydicom datasets."""
    found = httpx.post(orthanc.url + '/tools/find', json={'Level': 'Instance', 'Query': {'Modality': modality},
                                                          'Expand': False}, timeout=60).json()
    return [pydicom.dcmread(io.BytesIO(httpx.get(f'{orthanc.url}/instances/{i}/file', timeout=60).content))
            for i in found]


def node_jobs(node, since: float) -> list:
    return [j for j in node.api.get('/api/jobs').json()['jobs'] if j['source'] == 'dicom:ORTHANC' and
            j['created'] >= time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(since - 1))]


def wait_for(condition, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f'{what}: not within {timeout} s')


def pacs_copy(source_folder: str, target, description: str = None, drop_middle: bool = False) -> list:
    """A CT series as a PACS holds it, as new files: new UIDs (a new patient's series, PatientID the target folder's
    name), uncompressed, optionally renamed or with its middle slice missing. (The shared abdominal CT comes
    anonymised without study / series / instance UIDs and JPEG 2000 compressed.)"""
    files = sorted(glob.glob(os.path.join(source_folder, '*')),
                   key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    if drop_middle:
        files.pop(len(files) // 2)
    os.makedirs(target, exist_ok=True)
    series_uid, study_uid, frame_uid = (pydicom.uid.generate_uid() for _ in range(3))
    paths = []
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
        ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.FrameOfReferenceUID = series_uid, study_uid, frame_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.PatientID = ds.PatientName = os.path.basename(str(target))
        if description:
            ds.SeriesDescription = description
        paths.append(os.path.join(target, f'{k:03d}.dcm'))
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def test_echo_answers_and_an_unknown_ae_title_is_rejected(node):
    assert httpx.post(f'{node.orthanc.url}/modalities/node/echo', json={}, timeout=30).status_code == 200
    stranger = AE(ae_title='STRANGER')
    stranger.add_requested_context(Verification)
    assoc = stranger.associate('127.0.0.1', node.node_port, ae_title='NNUNET_RAS')
    assert assoc.is_rejected and not assoc.is_established
    refused = wait_for(lambda: [e for e in Store(node.server.data).events() if e['action'] == 'association refused'],
                       10, 'the refusal in the audit log')
    assert "'STRANGER'" in refused[-1]['detail']


@pytest.mark.shared_data
def test_two_series_sent_at_once_come_back_as_rtstructs_that_match_the_jobs(node, tmp_path):
    start = time.time()
    ids = [upload(node.orthanc, pacs_copy(node.cts[0], tmp_path / 'PHANTOM_A')),
           upload(node.orthanc, pacs_copy(ABDOMEN_CT, tmp_path / 'ABDOMEN'))]
    before = len(rtstructs(node.orthanc))
    send_to_node(node.orthanc, ids)
    jobs = wait_for(lambda: (lambda js: js if len(js) == 2 and all(j['delivery'] and j['delivery']['state'] == 'sent'
                                                                     for j in js) else None)(node_jobs(node, start)),
                    300, 'two delivered jobs')
    assert {j['owner'] for j in jobs} == {'physics'} and all(j['state'] == 'done' for j in jobs)
    assert {j['id'] for j in node.physics.get('/api/jobs').json()['jobs']} >= {j['id'] for j in jobs}
    found = rtstructs(node.orthanc)
    assert len(found) == before + 2
    assert len(rtstructs(node.orthanc, 'SEG')) >= 1  # a SEG is written unless every structure is empty

    assert {j['input']['patient'] for j in jobs} == {'PHANTOM_A', 'ABDOMEN'}
    for job in jobs:
        folder = str(tmp_path / job['input']['patient'])
        series = read_ct_series(folder)
        rt = next(r for r in found if r.PatientID == series.patient_id and
                  r.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == series.frame_of_reference_uid)
        assert rt.StudyInstanceUID == series.study_uid
        referenced = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0] \
            .RTReferencedSeriesSequence[0].SeriesInstanceUID
        assert referenced == series.series_uid
        rt_path = str(tmp_path / f"{job['id']}_rt.dcm")
        rt.save_as(rt_path)
        names = [s['name'] for s in job['structures']]
        assert names == ['Liver', 'GTV', 'CTV', 'PTV']
        from rt_utils import RTStructBuilder
        rt_utils = RTStructBuilder.create_from(dicom_series_path=folder, rt_struct_path=rt_path)
        assert set(rt_utils.get_roi_names()) == set(names)
        read_back = plastimatch_masks(rt_path, folder)
        for index, structure in enumerate(job['structures']):
            expected_path = tmp_path / f"{job['id']}_{index}.nii.gz"
            expected_path.write_bytes(node.api.get(structure['url']).content)
            expected = sitk.GetArrayFromImage(sitk.ReadImage(str(expected_path))) > 0
            got = label_on_series_grid(read_back[structure['name']], series) > 0 if structure['name'] in read_back \
                else np.zeros_like(expected)
            if expected.any() or got.any():
                assert dice(got.astype(np.uint8), expected.astype(np.uint8), 1) >= 0.99, (job['id'],
                                                                                           structure['name'])
            if structure['name'] == 'PTV' and expected.any():
                # rt-utils fills the polygon through its rounded vertices (cv2.fillPoly), so it adds or drops the
                # voxels the contour line passes by: on the 1-epoch model's speckled Liver / GTV that costs 0.1-0.2
                # Dice; on the margin-grown PTV, whose border is smooth, it reads the job's mask back up to that line
                # (0.986-1.0 Dice, depending on the random model's PTV), so every voxel where they differ must lie
                # on the mask's in-plane border
                mask = np.moveaxis(rt_utils.get_roi_mask_by_name('PTV'), 2, 0)  # (rows, columns, slices) -> zyx
                in_plane = np.ones((1, 3, 3), bool)
                border = ndimage.binary_dilation(expected, in_plane) & ~ndimage.binary_erosion(expected, in_plane)
                differ = mask != expected
                assert not (differ & ~border).any(), (job["id"], int((differ & ~border).sum()))
                assert dice(mask.astype(np.uint8), expected.astype(np.uint8), 1) >= 0.95, job['id']
    assert not os.listdir(os.path.join(node.server.data, 'dicom_incoming'))  # every series became a job


def test_an_incomplete_series_is_refused_with_the_reason_and_nothing_is_sent(node, tmp_path):
    start = time.time()
    before = len(rtstructs(node.orthanc))
    send_to_node(node.orthanc, [upload(node.orthanc, pacs_copy(node.cts[1], tmp_path / 'GAP', drop_middle=True))])
    job = wait_for(lambda: next(iter(node_jobs(node, start)), None), 60, 'the refused job')
    assert job['state'] == 'failed' and job['message'] == 'refused' and job['delivery'] is None
    assert 'nothing was sent' in job['error'] and ('missing' in job['error'] or 'gap' in job['error']), job['error']
    assert job['input']['patient'] == 'GAP' and job['owner'] == 'physics'
    time.sleep(3)
    assert len(rtstructs(node.orthanc)) == before


def test_a_destination_that_is_down_gets_the_results_when_it_comes_up(node, tmp_path):
    start = time.time()
    send_to_node(node.orthanc, [upload(node.orthanc, pacs_copy(node.cts[2], tmp_path / 'LATE_PATIENT',
                                                                  description='phantom CT late'))])
    job = wait_for(lambda: next((j for j in node_jobs(node, start) if j['delivery'] and
                                 j['delivery']['attempts'] >= 1), None), 300, 'a failed first delivery')
    assert job['state'] == 'done' and job['delivery']['state'] == 'pending', job['delivery']
    assert 'LATE at 127.0.0.1' in job['delivery']['error']
    late = OrthancProcess(str(node.root / 'late'), 'LATE', dicom_port=node.late_port).start()
    try:
        job = wait_for(lambda: (lambda j: j if j['delivery']['state'] == 'sent' else None)(
            node.api.get(f"/api/jobs/{job['id']}").json()), 120, 'delivery once LATE is up')
        assert job['delivery']['destinations'][0]['sent'] and job['delivery']['error'] is None
        delivered = rtstructs(late)
        assert len(delivered) == 1 and delivered[0].PatientID == 'LATE_PATIENT'
        again = node.physics.post(f"/api/jobs/{job['id']}/send")  # sent again from the page
        assert again.status_code == 202 and again.json()['delivery']['state'] == 'pending'
        wait_for(lambda: node.api.get(f"/api/jobs/{job['id']}").json()['delivery']['state'] == 'sent', 60,
                 'sending again')
        assert node.physics.post(f"/api/jobs/{job['id']}/send").status_code == 202
    finally:
        late.stop()


def test_rules_files_with_mistakes_are_refused_naming_the_entry(tmp_path):
    cases = [('[[rules]]\nmodality = "CT"\n', 'no [senders.AE_TITLE]'),
             ('[senders.TPS]\nport = 104\n[[rules]]\nsend_to = ["ARCHIVE"]\n', "send_to 'ARCHIVE'"),
             ('[senders.TPS]\n[[rules]]\n', "has no port"),
             ('[senders.TPS]\nport = 104\n[[rules]]\nmodel = "lung"\n', "model 'lung'"),
             ('[senders.WAY_TOO_LONG_AE_TITLE]\nport = 1\n[[rules]]\n', 'AE title'),
             ('[senders.TPS]\nport = 104\n[[rules]]\nmodalty = "CT"\n', 'unknown key(s) modalty'),
             ('[senders.TPS\n', 'not valid TOML')]
    for text, words in cases:
        path = tmp_path / 'rules.toml'
        path.write_text(text)
        with pytest.raises(RulesError, match='rules.toml') as error:
            load_rules(str(path))
        assert words in str(error.value), (text, str(error.value))
    path.write_text(RULES.format(orthanc_port=104, late_port=105))
    rules = load_rules(str(path))
    assert rules.route({'ae_title': 'ORTHANC', 'modality': 'CT', 'series_description': 'Late arterial'}).index == 1
    assert rules.route({'ae_title': 'ORTHANC', 'modality': 'CT', 'series_description': 'abdomen'}).index == 2
    assert rules.route({'ae_title': 'ORTHANC', 'modality': 'MR', 'series_description': 'abdomen'}) is None


def test_the_standalone_node_answers_echo_and_stops_on_sigterm(node, tmp_path):
    port = free_port()
    log = open(tmp_path / 'node.log', 'w')
    process = subprocess.Popen(['nnunet-ras', 'dicom-node', '-m', node.model, '--data', str(tmp_path / 'data'),
                                '--rules', node.rules, '--dicom_port', str(port), '--ae_title', 'NODE2',
                                '-device', 'cpu', '--no_worker'], env=node.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: dicom_echo(port, 'NODE2', 'ORTHANC') is not None, 120,
                          'an association with nnunet-ras dicom-node')
        assert dicom_echo(port, 'NODE2', 'ORTHANC') == 0x0000
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        log.close()


def test_the_readmes_rules_example_is_a_valid_rules_file(tmp_path):
    readme = open(os.path.join(os.path.dirname(__file__), '..', 'README.md')).read()
    section = readme[readme.index('## DICOM node'):]
    example = section[section.index('```toml') + len('```toml'):section.index('```', section.index('```toml') + 7)]
    path = tmp_path / 'rules.toml'
    path.write_text(example)
    rules = load_rules(str(path))
    assert list(rules.senders) == ['TPS'] and rules.rules[0].model == 'liver' and rules.rules[0].seg
    rule = rules.route({'ae_title': 'TPS', 'modality': 'CT', 'series_description': 'CT ABDOMEN 3mm'})
    assert [p.ae_title for p in rules.destinations_for(rule, 'TPS', '10.0.0.5')] == ['TPS', 'ARCHIVE']


def test_a_data_folder_from_before_the_node_keeps_its_jobs_and_gains_the_delivery_columns(tmp_path):
    import sqlite3
    old_schema = Store.__init__.__globals__['SCHEMA'].replace(',\n    delivery TEXT, delivery_next REAL', '')
    assert 'delivery' not in old_schema
    with sqlite3.connect(tmp_path / 'service.sqlite3') as db:
        db.executescript(old_schema)
        db.execute("INSERT INTO jobs (id, owner, task, state, progress, message, created, source, input_kind, "
                   "input_name, params) VALUES ('j1', 'alice', 'predict', 'done', 1, 'done', 0, 'web', 'nifti', "
                   "'ct.nii.gz', '{}')")
    store = Store(str(tmp_path))
    job = store.job('j1')
    assert job.owner == 'alice' and job.delivery is None and job.delivery_next is None
    assert store.set_delivery('j1', {'state': 'pending', 'next': 5.0, 'attempts': 0, 'to': [], 'sent': []})
    assert [j.id for j in store.due_deliveries(10.0)] == ['j1'] and store.due_deliveries(1.0) == []


def test_a_rules_models_speed_switches_must_be_true_or_false(tmp_path):
    from nnunet_ras.errors import UserInputError
    from nnunet_ras.service.cli import _rules_model
    for key in ('bf16', 'torch_resampling'):
        with pytest.raises(UserInputError, match=rf"rules.toml \[models.liver\]: {key} = 'yes': expected true or false"):
            _rules_model({'model': ['liver_model'], key: 'yes'}, 'liver', str(tmp_path / 'rules.toml'))
