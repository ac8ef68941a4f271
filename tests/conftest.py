"""Shared fixtures: an isolated nnU-Net environment with a tiny phantom data set, and step timings."""
import json
import os
from typing import Dict, List

import pytest

from nnunet_ras.phantom import PhantomGeometry, write_phantom_dataset
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
