"""Shared fixtures: an isolated nnU-Net environment with a tiny phantom data set, and step timings."""
import json
import os
import subprocess
import time
from typing import Dict, List

import pytest

from nnunet_ras.installation import nnunet_command_environment, trainer_path
from nnunet_ras.phantom import PhantomGeometry, write_phantom_dataset

TINY = PhantomGeometry(shape_zyx=(16, 48, 48), spacing_zyx=(3.0, 0.8, 0.8))
STEP_TIMES: Dict[str, float] = {}


class NnunetWorkspace:
    """nnUNet_raw / _preprocessed / _results in a temporary folder, and a runner for stock commands."""

    def __init__(self, root):
        self.root = str(root)
        folders = {var: os.path.join(self.root, var)
                   for var in ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results')}
        for folder in folders.values():
            os.makedirs(folder, exist_ok=True)
        self.env = nnunet_command_environment(folders)
        self.env['nnUNet_extTrainer'] = trainer_path()  # only this plugin's trainers, whatever the caller has set
        self.env['nnUNet_n_proc_DA'] = '1'
        self.env['nnUNet_def_n_proc'] = '2'

    def path(self, var: str, *parts: str) -> str:
        return os.path.join(self.env[var], *parts)

    def run(self, cmd: List[str], step: str = None, check: bool = True, timeout: float = 900):
        start = time.time()
        result = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if step is not None:
            STEP_TIMES[step] = time.time() - start
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                                 f"{result.stderr[-3000:]}")
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
