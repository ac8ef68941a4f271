"""The service's own records in one SQLite file of its data folder: users (token hashes), jobs and an audit log.

The queue engine (huey) only carries job ids; what a job is, whose it is, where it stands and why it failed lives
here, so that a restarted service still knows every job. SQLite in WAL mode lets the web server and workers on this
machine (or on machines that share the data folder over a file system with working locks) read and write at once.

API tokens are 256-bit random strings, so a salted SHA-256 (HMAC) is enough to store them: slow password hashes
exist for guessable secrets, and would cost every API call tens of milliseconds.
"""
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Optional

from nnunet_ras.errors import UserInputError

ROLES = ('user', 'admin')
RUNNING_STATES = ('preprocessing', 'predicting', 'exporting')
FINISHED_STATES = ('done', 'failed')
TOKEN_PREFIX = 'nrs'
ADDED_COLUMNS = {'delivery': 'TEXT', 'delivery_next': 'REAL'}  # job columns newer than the first data folders

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, token_id TEXT UNIQUE NOT NULL, salt BLOB NOT NULL,
    token_hash BLOB NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, task TEXT NOT NULL, state TEXT NOT NULL, progress REAL NOT NULL,
    message TEXT NOT NULL, error TEXT, created REAL NOT NULL, started REAL, finished REAL, heartbeat REAL,
    attempts INTEGER NOT NULL DEFAULT 0, worker TEXT, source TEXT NOT NULL, input_kind TEXT NOT NULL,
    input_name TEXT NOT NULL, patient TEXT, params TEXT NOT NULL, quality REAL, timings TEXT NOT NULL DEFAULT '{}',
    delivery TEXT, delivery_next REAL);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, created);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, user TEXT NOT NULL, action TEXT NOT NULL,
    job TEXT, detail TEXT);
"""


@dataclass
class User:
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == 'admin'


@dataclass
class Job:
    id: str
    owner: str
    task: str  # 'predict' or 'margins' (re-apply margins to the stored label map)
    state: str  # queued, preprocessing, predicting, exporting, done, failed
    progress: float
    message: str
    error: Optional[str]
    created: float
    started: Optional[float]
    finished: Optional[float]
    heartbeat: Optional[float]
    attempts: int
    worker: Optional[str]
    source: str  # 'web', or 'dicom:<calling AE title>'
    input_kind: str
    input_name: str
    patient: Optional[str]
    params: dict
    quality: Optional[float]
    timings: dict
    delivery: Optional[dict]  # a DICOM node's job: where its results go and how far that got (see new_delivery)
    delivery_next: Optional[float]  # when the node's delivery thread sends it next; None: nothing due


def _hash(salt: bytes, secret: str) -> bytes:
    return hmac.new(salt, secret.encode(), hashlib.sha256).digest()


class Store:
    """Users, jobs and events in ``<data>/service.sqlite3``; one short connection per call, so it is safe to use
    from any thread or process."""

    def __init__(self, data_folder: str):
        os.makedirs(data_folder, exist_ok=True)
        self.path = os.path.join(data_folder, 'service.sqlite3')
        with self._connect() as db:
            db.execute('PRAGMA journal_mode=WAL')
            db.executescript(SCHEMA)
            columns = {row['name'] for row in db.execute('PRAGMA table_info(jobs)')}
            for name, kind in ADDED_COLUMNS.items():
                if name not in columns:
                    db.execute(f'ALTER TABLE jobs ADD COLUMN {name} {kind}')
            db.execute('CREATE INDEX IF NOT EXISTS jobs_delivery ON jobs (delivery_next)')

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute('BEGIN IMMEDIATE')
            try:
                yield db
            except BaseException:
                db.execute('ROLLBACK')
                raise
            db.execute('COMMIT')

    # users
    def add_user(self, name: str, role: str = 'user') -> str:
        """Creates a user and returns their token; only a salted hash of it is kept, so it cannot be shown again."""
        if not name or not name.replace('-', '').replace('_', '').replace('.', '').isalnum() or len(name) > 64:
            raise UserInputError(f"user name {name!r}: use 1-64 letters, digits, '-', '_' or '.'")
        if role not in ROLES:
            raise UserInputError(f"role {role!r}: one of {', '.join(ROLES)}")
        token_id, secret, salt = secrets.token_hex(8), secrets.token_urlsafe(32), secrets.token_bytes(16)
        try:
            with self._transaction() as db:
                db.execute('INSERT INTO users VALUES (?, ?, ?, ?, ?, ?)',
                           (name, role, token_id, salt, _hash(salt, secret), time.time()))
        except sqlite3.IntegrityError:
            raise UserInputError(f"user {name!r} exists already (remove-user first to issue a new token)") from None
        self.log(name, 'user created', detail=role)
        return f'{TOKEN_PREFIX}_{token_id}_{secret}'

    def remove_user(self, name: str) -> None:
        with self._transaction() as db:
            if db.execute('DELETE FROM users WHERE name = ?', (name,)).rowcount == 0:
                raise UserInputError(f"no user {name!r}")
        self.log(name, 'user removed')

    def users(self) -> List[User]:
        with self._connect() as db:
            return [User(r['name'], r['role']) for r in db.execute('SELECT name, role FROM users ORDER BY name')]

    def authenticate(self, token: str) -> Optional[User]:
        """The user whose token this is, or None."""
        prefix, _, rest = (token or '').partition('_')
        token_id, _, secret = rest.partition('_')
        if prefix != TOKEN_PREFIX or not token_id or not secret:
            return None
        with self._connect() as db:
            row = db.execute('SELECT * FROM users WHERE token_id = ?', (token_id,)).fetchone()
        if row is None or not hmac.compare_digest(_hash(row['salt'], secret), row['token_hash']):
            return None
        return User(row['name'], row['role'])

    # jobs
    def add_job(self, owner: str, source: str, input_kind: str, input_name: str, patient: Optional[str],
                params: dict, job_id: Optional[str] = None, refused: Optional[str] = None) -> Job:
        """A queued job; with ``refused`` (the reason) a failed one that never runs, kept so the sender can see
        why (a DICOM node's series that cannot be contoured)."""
        job_id = job_id or new_job_id()
        now = time.time()
        state, message = ('failed', 'refused') if refused else ('queued', 'queued')
        with self._transaction() as db:
            db.execute('INSERT INTO jobs (id, owner, task, state, progress, message, error, created, finished, '
                       'source, input_kind, input_name, patient, params) VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, '
                       '?, ?)', (job_id, owner, 'predict', state, message, refused, now, now if refused else None,
                                 source, input_kind, input_name, patient, json.dumps(params)))
        self.log(owner, 'job refused' if refused else 'job submitted', job_id,
                 f"{input_kind} {input_name}" + (f": {refused}" if refused else ''))
        return self.job(job_id)

    def job(self, job_id: str) -> Optional[Job]:
        with self._connect() as db:
            row = db.execute('SELECT * FROM jobs WHERE id = ?', (job_id,)).fetchone()
        return _job(row) if row else None

    def jobs(self, owner: Optional[str] = None, states: Optional[tuple] = None) -> List[Job]:
        """Newest first; ``owner`` None means everyone's."""
        query, args = 'SELECT * FROM jobs WHERE 1', []
        if owner is not None:
            query, args = query + ' AND owner = ?', args + [owner]
        if states:
            query += f" AND state IN ({', '.join('?' * len(states))})"
            args += list(states)
        with self._connect() as db:
            return [_job(r) for r in db.execute(query + ' ORDER BY created DESC, id', args)]

    def queue_position(self, job: Job) -> Optional[int]:
        """1 for the next job to run; None when the job is not queued."""
        if job.state != 'queued':
            return None
        with self._connect() as db:
            ahead = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND (created < ? OR "
                               "(created = ? AND id < ?))", (job.created, job.created, job.id)).fetchone()[0]
        return ahead + 1

    def requeue(self, job_id: str, task: str, message: str, params: Optional[dict] = None) -> bool:
        """A finished job goes back into the queue for ``task`` (e.g. new margins); False if it is not finished."""
        with self._transaction() as db:
            sets, args = "task = ?, state = 'queued', progress = 0, message = ?, error = NULL, attempts = 0", \
                [task, message]
            if params is not None:
                sets, args = sets + ', params = ?', args + [json.dumps(params)]
            return db.execute(f"UPDATE jobs SET {sets} WHERE id = ? AND state IN ('done', 'failed')",
                              args + [job_id]).rowcount == 1

    def claim(self, job_id: str, worker: str) -> Optional[Job]:
        """Marks a queued job as started by ``worker`` (attempts + 1) and returns it; None when it is not queued
        (deleted, or claimed by another worker)."""
        now = time.time()
        with self._transaction() as db:
            changed = db.execute("UPDATE jobs SET state = 'preprocessing', message = 'preprocessing', started = ?, "
                                 "heartbeat = ?, attempts = attempts + 1, worker = ?, progress = 0 "
                                 "WHERE id = ? AND state = 'queued'", (now, now, worker, job_id)).rowcount
        return self.job(job_id) if changed else None

    def update_running(self, job: Job, **fields) -> bool:
        """Updates a job this worker runs (heartbeat now); False when it is no longer this worker's attempt (deleted,
        or handed to another worker after a stale heartbeat)."""
        fields = _encoded({**fields, 'heartbeat': time.time()})
        sets = ', '.join(f'{k} = ?' for k in fields)
        with self._transaction() as db:
            return db.execute(f"UPDATE jobs SET {sets} WHERE id = ? AND worker = ? AND attempts = ? AND state IN "
                              f"({', '.join('?' * len(RUNNING_STATES))})",
                              [*fields.values(), job.id, job.worker, job.attempts, *RUNNING_STATES]).rowcount == 1

    def finish(self, job: Job, state: str, message: str, error: Optional[str] = None, **fields) -> bool:
        assert state in FINISHED_STATES
        return self.update_running(job, state=state, message=message, error=error, finished=time.time(),
                                   progress=1.0 if state == 'done' else job.progress, **fields)

    def stale_jobs(self, older_than: float) -> List[Job]:
        """Running jobs whose heartbeat is older than ``older_than`` (a time)."""
        with self._connect() as db:
            rows = db.execute(f"SELECT * FROM jobs WHERE state IN ({', '.join('?' * len(RUNNING_STATES))}) "
                              f"AND heartbeat < ?", (*RUNNING_STATES, older_than)).fetchall()
        return [_job(r) for r in rows]

    def recover(self, job: Job, max_attempts: int) -> Optional[str]:
        """A job whose worker stopped: back into the queue while it has attempts left (returns 'queued'), else
        failed with the reason (returns 'failed'); None when it changed meanwhile."""
        when = time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(job.heartbeat or 0))
        with self._transaction() as db:
            if job.attempts < max_attempts:
                state, args = 'queued', ('queued', f're-queued: its worker {job.worker} stopped responding '
                                                   f'(last heartbeat {when})', None)
            else:
                state, args = 'failed', ('failed', 'failed', f'its worker stopped responding {job.attempts} times '
                                                             f'(last: {job.worker}, heartbeat {when}); not retried')
            changed = db.execute('UPDATE jobs SET state = ?, message = ?, error = ?, finished = ? WHERE id = ? AND '
                                 'attempts = ? AND heartbeat = ?',
                                 (*args, time.time() if state == 'failed' else None, job.id, job.attempts,
                                  job.heartbeat)).rowcount
        if changed:
            self.log('service', f'job {state} after a stale heartbeat', job.id, job.worker)
        return state if changed else None

    # deliveries of a DICOM node's results
    def due_deliveries(self, now: float) -> List[Job]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM jobs WHERE state = 'done' AND delivery_next <= ? ORDER BY delivery_next",
                              (now,)).fetchall()
        return [_job(r) for r in rows]

    def take_delivery(self, job: Job) -> bool:
        """Marks a due delivery as being sent by the caller; False when another thread took it or it changed."""
        with self._transaction() as db:
            return db.execute("UPDATE jobs SET delivery = ?, delivery_next = NULL WHERE id = ? AND state = 'done' "
                              "AND delivery_next = ?", (json.dumps({**job.delivery, 'state': 'sending'}), job.id,
                                                        job.delivery_next)).rowcount == 1

    def set_delivery(self, job_id: str, delivery: dict, only_if_state: Optional[str] = None) -> bool:
        """Records a delivery's state; ``only_if_state`` guards against a concurrent change (e.g. 'sending')."""
        fields = _encoded({'delivery': delivery})
        query = "UPDATE jobs SET delivery = ?, delivery_next = ? WHERE id = ? AND state = 'done'"
        args = [fields['delivery'], fields['delivery_next'], job_id]
        if only_if_state:
            query, args = query + " AND json_extract(delivery, '$.state') = ?", args + [only_if_state]
        with self._transaction() as db:
            return db.execute(query, args).rowcount == 1

    def interrupted_deliveries(self) -> List[Job]:
        """Deliveries left 'sending' by a node that stopped while sending."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM jobs WHERE json_extract(delivery, '$.state') = 'sending'").fetchall()
        return [_job(r) for r in rows]

    def expired_jobs(self, finished_before: float) -> List[Job]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM jobs WHERE state IN ('done', 'failed') AND finished < ?",
                              (finished_before,)).fetchall()
        return [_job(r) for r in rows]

    def delete_job(self, job_id: str) -> bool:
        with self._transaction() as db:
            return db.execute('DELETE FROM jobs WHERE id = ?', (job_id,)).rowcount == 1

    # audit log
    def log(self, user: str, action: str, job: Optional[str] = None, detail: Optional[str] = None) -> None:
        with self._connect() as db:
            db.execute('INSERT INTO events (time, user, action, job, detail) VALUES (?, ?, ?, ?, ?)',
                       (time.time(), user, action, job, detail))

    def events(self, job: Optional[str] = None) -> List[dict]:
        with self._connect() as db:
            rows = db.execute('SELECT * FROM events' + (' WHERE job = ?' if job else '') + ' ORDER BY id',
                              (job,) if job else ()).fetchall()
        return [dict(r) for r in rows]


def new_delivery() -> dict:
    """A delivery due now to every destination of the job (its ``params['deliver']``); ``sent`` names those
    reached."""
    return {'state': 'pending', 'attempts': 0, 'next': time.time(), 'error': None, 'sent': []}


def _encoded(fields: dict) -> dict:
    """Job fields as stored: JSON for the dicts; a delivery also sets when it is due next."""
    fields = dict(fields)
    if 'timings' in fields:
        fields['timings'] = json.dumps(fields['timings'])
    if 'delivery' in fields:
        delivery = fields['delivery']
        fields['delivery_next'] = delivery['next'] if delivery and delivery['state'] == 'pending' else None
        fields['delivery'] = json.dumps(delivery) if delivery is not None else None
    return fields


def new_job_id() -> str:
    return uuid.uuid4().hex[:16]


def _job(row: sqlite3.Row) -> Job:
    values = dict(row)
    values['params'] = json.loads(values['params'])
    values['timings'] = json.loads(values['timings'] or '{}')
    values['delivery'] = json.loads(values['delivery']) if values['delivery'] else None
    return Job(**values)
