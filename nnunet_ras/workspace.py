"""An nnU-Net workspace: nnUNet_raw / _preprocessed / _results under one folder, and a runner of nnU-Net's stock
commands in it. The demo, the benchmarks under ``bench/`` and the tests run their commands through it."""
import os
import subprocess
import sys
import time
from typing import List, Optional, Sequence, TextIO

from nnunet_ras.installation import trainer_path

NNUNET_FOLDERS = ('nnUNet_raw', 'nnUNet_preprocessed', 'nnUNet_results')


class Workspace:
    """The three nnU-Net folders under ``root`` (``keep_set_folders``: those set in the environment win) and the
    environment for nnU-Net's commands: ``os.environ`` with the folders, this interpreter's scripts first on ``PATH``
    (so the commands of this environment run even when it is not activated), CPU-sized augmentation workers, and
    ``nnUNet_extTrainer`` listing this plugin's trainer folder first, then ``trainer_folders`` only or, without them,
    the caller's; ``variables`` are further ones (worker counts)."""

    def __init__(self, root: str, keep_set_folders: bool = False, trainer_folders: Optional[Sequence[str]] = None,
                 **variables: str):
        self.root = os.path.abspath(str(root))
        folders = {var: (keep_set_folders and os.environ.get(var)) or os.path.join(self.root, var)
                   for var in NNUNET_FOLDERS}
        for folder in folders.values():
            os.makedirs(folder, exist_ok=True)
        self.env = dict(os.environ, **folders)
        if trainer_folders is None:
            set_before = self.env.get('nnUNet_extTrainer', '').split(os.pathsep)
            trainer_folders = [p for p in set_before if p and p != trainer_path()]
        self.env['nnUNet_extTrainer'] = os.pathsep.join([trainer_path(), *trainer_folders])
        self.env['PATH'] = os.pathsep.join([os.path.dirname(sys.executable), self.env.get('PATH', '')])
        self.env.setdefault('nnUNet_n_proc_DA', str(max(1, min(2, os.cpu_count() or 1))))
        self.env.update(variables)

    def path(self, var: str, *parts: str) -> str:
        return os.path.join(self.env[var], *parts)

    def run(self, cmd: List[str], capture: bool = False, log: Optional[TextIO] = None, check: bool = True,
            timeout: Optional[float] = None) -> subprocess.CompletedProcess:
        """Runs a command in this workspace's environment; the result carries its wall time as ``seconds``.

        Output is streamed after the command line (default), captured (``capture``), or appended with the command
        line and its exit code to ``log``. With ``check`` a failure raises RuntimeError naming the command, its exit
        code and the captured output's end (or the log).
        """
        if log is not None:
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
        elif not capture:
            print(f"\n$ {' '.join(cmd)}", flush=True)
        start = time.time()
        result = subprocess.run(cmd, env=self.env, capture_output=capture, text=True, timeout=timeout,
                                stdout=log, stderr=subprocess.STDOUT if log is not None else None)
        result.seconds = time.time() - start
        if log is not None:
            log.write(f"# exit {result.returncode} after {result.seconds:.1f} s\n")
            log.flush()
        if check and result.returncode != 0:
            output = f"see {log.name}" if log is not None else \
                f"\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}" if capture else "output above"
            raise RuntimeError(f"{' '.join(cmd)} failed with exit code {result.returncode}: {output}")
        return result
