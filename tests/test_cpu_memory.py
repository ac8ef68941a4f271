"""``cpu_memory.keep_freed_memory``: a freed large tensor's pages are reused by the next one (no fresh page faults),
and ``nnUNet_ras_keep_cpu_memory=0`` leaves glibc's behaviour (every large tensor faults its pages in anew). Each
case runs in a fresh process, since the setting is per process; the fault counts are the kernel's (getrusage)."""
import os
import subprocess
import sys

import pytest

from nnunet_ras.cpu_memory import ENVIRONMENT_VARIABLE

PAGES = 100 * 2 ** 20 // 4096  # a 100 MB tensor, far above glibc's 32 MB mmap threshold

# steps of a training loop in miniature: two 100 MB tensors made and freed per step; the page faults of steps 7-12
# (glibc's heap needs a few steps before freed blocks sit where the next aligned requests fit)
CODE = '''
import resource, torch
from nnunet_ras.cpu_memory import keep_freed_memory
kept = keep_freed_memory()
faults = []
for step in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(25 * 2 ** 20); y = x * 2; total = float(y.sum()); del x, y
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(kept, sum(faults[6:]), total)
'''


def _page_faults_of_six_steps(setting: str):
    env = {**os.environ, ENVIRONMENT_VARIABLE: setting}
    out = subprocess.run([sys.executable, '-c', CODE], env=env, capture_output=True, text=True, check=True).stdout
    kept, faults, total = out.split()
    assert float(total) == 2 * 25 * 2 ** 20  # the reused memory holds the new tensors' values
    return kept == 'True', int(faults)


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc malloc and getrusage page faults: Linux')
def test_freed_memory_is_reused_without_page_faults():
    kept, faults = _page_faults_of_six_steps('1')
    assert kept
    assert faults < 2 * PAGES, faults  # six steps of 200 MB each fault in less than one step's worth: reused memory
    kept, faults = _page_faults_of_six_steps('0')
    assert not kept
    assert faults > 10 * PAGES, faults  # glibc maps fresh blocks and faults every page in again, every step
