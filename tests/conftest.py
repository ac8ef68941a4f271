"""Shared fixtures: an isolated nnU-Net environment with a tiny phantom data set, and step timings."""
import json
import os
from typing import Dict, List

import pytest

from nnunet_ras.phantom import PhantomGeometry, write_phantom_dataset
from nnunet_ras.service.launch import ServiceProcess, zip_folder
from nnunet_ras.workspace import Workspace

TINY = PhantomGeometry(shape_zyx=(16, 48, 48), spacing_zyx=(3.0, 0.8, 0.8))
STEP_TIMES: Dict[str, float] = {}
# the real data sets next to the repository; tests that read them are marked ``shared_data`` (pytest -m shared_data)
SHARED_DATA = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..', 'shared', 'data'))


def pytest_configure(config):
    config.addinivalue_line('markers', f'shared_data: reads the real data sets in ../shared/data ({SHARED_DATA})')


def pytest_runtest_setup(item):
    if item.get_closest_marker('shared_data') is not None and not os.path.isdir(SHARED_DATA):
        pytest.fail(f"{item.name} reads the real data in {SHARED_DATA}, which is missing: put the shared data "
                    f"folder (../shared/data, see its README.md) next to the repository, or deselect these tests "
                    f"with -m 'not shared_data'", pytrace=False)


class NnunetWorkspace(Workspace):
    """A workspace in a temporary folder that sees only this plugin's trainers; ``run`` captures the output and
    records the wall time of a named ``step``."""

    def __init__(self, root):
        super().__init__(root, trainer_folders=[], nnUNet_n_proc_DA='1', nnUNet_def_n_proc='2')

    def run(self, cmd: List[str], step: str = None, check: bool = True, timeout: float = 900):
        result = super().run(cmd, capture=True, check=check, timeout=timeout)
        if step is not None:
            STEP_TIMES[step] = result.seconds
        return result


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    ws = NnunetWorkspace(tmp_path)
    for var in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results', 'nnUNet_extTrainer'):
        monkeypatch.setenv(var, ws.env[var])
    return ws


@pytest.fixture(scope='module')
def tiny_phantom(tmp_path_factory):
    """A workspace holding Dataset990_TinyPhantom: 6 training and 2 test cases."""
    ws = NnunetWorkspace(tmp_path_factory.mktemp('nnunet'))
    write_phantom_dataset(ws.env['nnUNet_raw'], 990, 'TinyPhantom', num_train=6, num_test=2, seed=1, geometry=TINY)
    return ws


def pytest_terminal_summary(terminalreporter):
    if STEP_TIMES:
        terminalreporter.section('wall time of the end-to-end steps')
        for step, seconds in STEP_TIMES.items():
            terminalreporter.write_line(f"{seconds:8.1f} s  {step}")
        out = os.environ.get('NNUNET_RAS_STEP_TIMES')
        if out:
            with open(out, 'w') as f:
                json.dump(STEP_TIMES, f, indent=2)


# --- the contouring service: a real trained model, a real uvicorn server, real users -------------------------------

SERVICE_TRAINER = 'nnUNetTrainerRASQAM_1epoch_5iters'  # a QAM trainer: jobs get a contour quality score
SERVICE_CARD = {'intended_use': 'tests of the contouring service', 'warning': 'NOT FOR CLINICAL USE: test model',
                'roi_names': {'liver': 'Liver', 'tumour': 'GTV'}}


@pytest.fixture(scope='session')
def service_model(tmp_path_factory):
    """(workspace, model folder, DICOM patients' CT folders): a RAS U-Net + QAM model trained by stock
    nnUNetv2_train on a tiny phantom (1 epoch: its contours are poor but not empty), with a model card naming its
    ROIs Liver and GTV."""
    from nnunet_ras.dicom.phantom import write_phantom_patients
    ws = NnunetWorkspace(tmp_path_factory.mktemp('service_model'))
    write_phantom_dataset(ws.env['nnUNet_raw'], 991, 'ServicePhantom', num_train=6, num_test=0, seed=3, geometry=TINY)
    ws.run(['nnUNetv2_plan_and_preprocess', '-d', '991', '-c', '3d_fullres', '-np', '1', '-npfp', '1'],
           step='nnUNetv2_plan_and_preprocess (service fixture)')
    ws.run(['nnUNetv2_train', '991', '3d_fullres', '0', '-tr', SERVICE_TRAINER, '-device', 'cpu'],
           step=f'nnUNetv2_train {SERVICE_TRAINER} (service fixture)')
    model = ws.path('nnUNet_results', 'Dataset991_ServicePhantom', f'{SERVICE_TRAINER}__nnUNetPlans__3d_fullres')
    with open(os.path.join(model, 'model_card.json'), 'w') as f:
        json.dump(SERVICE_CARD, f)
    patients = write_phantom_patients(str(tmp_path_factory.mktemp('service_dicom')), 3, seed=5, with_rtstruct=False,
                                      geometry=TINY)
    return ws, model, [os.path.join(p, 'CT') for p in patients]


@pytest.fixture(scope='session')
def service(service_model, tmp_path_factory):
    """A running service on the tiny model (SQLite queue, in-process worker, small upload limits for the tests)
    with its admin token (``.token``) and a DICOM zip of a phantom CT (``.dicom_zip``)."""
    ws, model, cts = service_model
    root = tmp_path_factory.mktemp('service')
    server = ServiceProcess(ws.env, str(root / 'data'), model, '--max_upload_mb', '8', '--max_unzipped_mb', '40',
                            '--max_files', '300', '--disable_tta').start()
    server.cts = cts
    server.dicom_zip = zip_folder(cts[0], str(root / 'ct.zip'))
    yield server
    server.stop()
