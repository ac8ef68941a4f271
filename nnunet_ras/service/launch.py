"""Starting ``nnunet-ras serve`` in a subprocess on a free loopback port, and zipping a DICOM series the way a user
uploads it: for the tests and the benchmarks."""
import os
import re
import socket
import subprocess
import time
import urllib.request
import zipfile
from typing import Dict, Optional


def free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def zip_folder(folder: str, target: str) -> str:
    """The files of ``folder`` (a DICOM series) as the zip ``target``; returns ``target``."""
    with zipfile.ZipFile(target, 'w', zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(os.listdir(folder)):
            archive.write(os.path.join(folder, name), name)
    return target


class _Started:
    """A started server process (``.process``) whose output goes to the open file ``.output``."""
    process: Optional[subprocess.Popen] = None

    def stop(self, kill: bool = False) -> None:
        """Terminates (or kills) it and waits; killed if it has not ended 30 s after SIGTERM."""
        if self.process is None:
            return
        if self.process.poll() is None:
            (self.process.kill if kill else self.process.terminate)()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.output.close()
        self.process = None

    def _wait_until_answers(self, url: str, timeout: float, name: str, tail) -> None:
        """Polls ``url`` until it answers; stops the process and raises (with ``tail()``, what it printed) when it
        exits or does not answer within ``timeout`` seconds."""
        deadline = time.time() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.process.returncode}:\n{tail()}")
            try:
                urllib.request.urlopen(url, timeout=2)
                return
            except OSError:
                if time.time() > deadline:
                    self.stop(kill=True)
                    raise RuntimeError(f"{name} did not answer in {timeout} s:\n{tail()}")
                time.sleep(0.2)


class ServiceProcess(_Started):
    """``nnunet-ras serve -m MODEL --data DATA`` on 127.0.0.1:<free port>; ``.token`` is the admin token it prints
    on its first start; its output goes to ``DATA.log``."""

    def __init__(self, env: Dict[str, str], data: str, model: str, *extra: str):
        self.env, self.data, self.model, self.extra = env, data, model, list(extra)
        self.port = free_port()
        self.url = f'http://127.0.0.1:{self.port}'
        self.token: Optional[str] = None
        self.log = data + '.log'

    def start(self, timeout: float = 120) -> 'ServiceProcess':
        os.makedirs(self.data, exist_ok=True)
        self.output = open(self.log, 'a')
        self.process = subprocess.Popen(['nnunet-ras', 'serve', '-m', self.model, '--data', self.data, '--port',
                                         str(self.port), '-device', 'cpu', *self.extra],
                                        env={**self.env, 'PYTHONUNBUFFERED': '1'}, stdout=self.output,
                                        stderr=subprocess.STDOUT)
        self._wait_until_answers(self.url + '/openapi.json', timeout, 'serve', self._tail)
        tokens = re.findall(r'nrs_[0-9a-f]+_[A-Za-z0-9_-]+', open(self.log).read())
        self.token = self.token or (tokens[0] if tokens else None)
        return self

    def _tail(self) -> str:
        with open(self.log) as f:
            return f.read()[-3000:]

    def add_user(self, name: str, admin: bool = False) -> str:
        """Adds a user through ``nnunet-ras serve-admin``; returns the token."""
        result = subprocess.run(['nnunet-ras', 'serve-admin', 'add-user', name, '--data', self.data] +
                                (['--admin'] if admin else []), env=self.env, capture_output=True, text=True,
                                check=True)
        return result.stdout.strip().splitlines()[-1]


ORTHANC = '/usr/sbin/Orthanc'  # Debian's orthanc package


class OrthancProcess(_Started):
    """Debian's Orthanc PACS on loopback with its own configuration and storage under ``folder``: DICOM port
    ``dicom_port`` (a free one by default) as AE ``aet``, REST API at ``.url``; ``modalities`` maps a name to
    (AE title, host, port) of the nodes it may send to. Its log goes to ``folder/orthanc.log``."""

    def __init__(self, folder: str, aet: str = 'ORTHANC', modalities: Optional[Dict[str, tuple]] = None,
                 dicom_port: Optional[int] = None):
        self.folder, self.aet = folder, aet
        self.dicom_port, self.http_port = dicom_port or free_port(), free_port()
        self.url = f'http://127.0.0.1:{self.http_port}'
        self.modalities = modalities or {}

    def start(self, timeout: float = 60) -> 'OrthancProcess':
        import json
        os.makedirs(self.folder, exist_ok=True)
        config = {'Name': f'nnunet-ras test {self.aet}', 'StorageDirectory': os.path.join(self.folder, 'storage'),
                  'IndexDirectory': os.path.join(self.folder, 'index'), 'HttpPort': self.http_port,
                  'DicomPort': self.dicom_port, 'DicomAet': self.aet, 'RemoteAccessAllowed': False,
                  'AuthenticationEnabled': False, 'HttpServerEnabled': True, 'DicomServerEnabled': True,
                  'DicomModalities': {name: list(m) for name, m in self.modalities.items()},
                  'DicomCheckCalledAet': False, 'StableAge': 2, 'Plugins': [], 'ConcurrentJobs': 2,
                  'StorageCompression': False, 'DicomScuTimeout': 30}
        path = os.path.join(self.folder, 'orthanc.json')
        with open(path, 'w') as f:
            json.dump(config, f, indent=2)
        self.output = open(os.path.join(self.folder, 'orthanc.log'), 'a')
        self.process = subprocess.Popen([ORTHANC, path], stdout=self.output, stderr=subprocess.STDOUT)
        self._wait_until_answers(self.url + '/system', timeout, 'Orthanc', lambda: f"see {self.output.name}")
        return self


def dicom_echo(port: int, called_ae: str, calling_ae: str = 'ECHOSCU', host: str = '127.0.0.1') -> Optional[int]:
    """C-ECHO to a DICOM node: its status (0 is success), or None when no association could be made."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if status else None
    finally:
        assoc.release()
