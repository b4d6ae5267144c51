"""Study storages from one string: in-memory, a journal file, an SQLite file or any RDB URL."""

from __future__ import annotations

import atexit
import os
import re
import time
import warnings
import weakref
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import optuna
from optuna.storages import (BaseStorage, InMemoryStorage, JournalStorage, RDBStorage,
                             RetryHeartbeatStaleTrialCallback)
from optuna.storages.journal import BaseJournalBackend, JournalFileBackend

from ._errors import SearchError
from ._urls import redact_url  # noqa: F401 - also search._storage.redact_url, as before

JOURNAL_SUFFIXES = (".journal", ".log", ".jsonl")
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
STORAGE_FORMS = ("'memory' (default)", "a journal file (*.journal, *.log)", "an SQLite file (*.db, *.sqlite)",
                 "an RDB URL (postgresql://..., mysql://..., sqlite:///...)")
# The password of an RDB URL without one, read by the process that opens the storage (PGPASSWORD
# is libpq's own); kept out of every message and report.
PASSWORD_ENV = ("HWNAS_STORAGE_PASSWORD", "PGPASSWORD")
# The Python driver for each URL scheme: SQLAlchemy's default for postgresql:// is psycopg2 before
# 2.1 and psycopg (3) after; hwnas installs psycopg 3 (pip install "hwnas[postgres]").
DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}
DRIVER_HINTS = {"postgresql": 'psycopg 3: pip install "psycopg[binary]" (or "hwnas[postgres]")',
                "mysql": "a MySQL driver: pip install pymysql and use mysql+pymysql://"}
# A dead worker's trials are failed after HEARTBEAT_GRACE_S without a heartbeat and re-queued.
HEARTBEAT_INTERVAL_S, HEARTBEAT_GRACE_S, MAX_RETRY = 10, 30, 3
CONNECT_ARGS = {"connect_timeout": 10}


class BufferedJournalFileBackend(BaseJournalBackend):
    """A journal file written in batches, for a study that one process owns.

    Optuna's file backend takes a file lock, appends and fsyncs once per operation: 23 times
    per trial in the cifar space, which made a 4,000-trial search 5.3x slower than in memory
    (1.6x buffered; experiments/results/search/search_storage.md). Here operations collect in memory and go to the
    file together, at least every ``flush_s`` seconds, at ``flush()`` and at exit. A crash loses
    at most those seconds of trials, and the study resumes from the file as before. Other
    processes only see flushed trials, so shared studies (Ray workers) keep the plain backend.
    """

    def __init__(self, path: str, flush_s: float = 2.0):
        self._file = JournalFileBackend(path)
        self._in_file: int | None = None  # counted by the first read: the storage starts by reading all
        self._buffer: list[dict[str, Any]] = []
        self._flush_s, self._last_flush = flush_s, time.monotonic()
        ref = weakref.ref(self)
        atexit.register(lambda: ref() is not None and ref().flush())

    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        """Logs from ``log_number_from`` on: those in the file, then the buffered ones."""
        if self._in_file is None:  # the whole file is parsed once, not once to count and once to read
            logs = list(self._file.read_logs(0))
            self._in_file, logs = len(logs), logs[log_number_from:]
        else:
            logs = list(self._file.read_logs(log_number_from)) if log_number_from < self._in_file else []
        return logs + self._buffer[max(0, log_number_from - self._in_file):]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Buffer ``logs``; write the buffer when it is ``flush_s`` old."""
        self._buffer.extend(logs)
        if time.monotonic() - self._last_flush >= self._flush_s:
            self.flush()

    def flush(self) -> None:
        """Write every buffered operation to the file (one lock, one fsync)."""
        if self._buffer:
            if self._in_file is None:
                self._in_file = sum(1 for _ in self._file.read_logs(0))
            self._file.append_logs(self._buffer)
            self._in_file += len(self._buffer)
            self._buffer = []
        self._last_flush = time.monotonic()


def flush_storage(storage: BaseStorage) -> None:
    """Write what a buffered journal holds in memory (no-op for other storages)."""
    backend = getattr(storage, "_backend", None)
    if isinstance(backend, BufferedJournalFileBackend):
        backend.flush()


def _scrub(text: str, url: str) -> str:
    """``text`` (a driver's error) without the password of ``url`` or of the environment."""
    secrets = [os.environ.get(k) for k in PASSWORD_ENV]
    m = re.search(r"://[^/@:]*:([^/@]*)@", url)
    if m:
        secrets += [m.group(1), unquote(m.group(1))]
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def with_password(url: str) -> str:
    """The URL a driver connects with: ``postgresql://`` mapped to psycopg 3, and, where the URL
    has no password, the one in $HWNAS_STORAGE_PASSWORD or $PGPASSWORD. Never show the result."""
    if "://" not in url or url.startswith("sqlite"):
        return url
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception as e:  # noqa: BLE001 - any parse error is a bad URL
        raise SearchError(f"storage URL {redact_url(url)!r} is malformed ({_scrub(str(e), url)}): expected "
                          "dialect://user@host:port/database") from None
    parsed = parsed.set(drivername=DRIVERS.get(parsed.drivername, parsed.drivername))
    keys = PASSWORD_ENV if parsed.drivername.startswith("postgresql") else PASSWORD_ENV[:1]
    password = next((os.environ[k] for k in keys if os.environ.get(k)), None)
    if parsed.password is None and password is not None:
        parsed = parsed.set(password=password)
    return parsed.render_as_string(hide_password=False)


def storage_url(spec: str | Path | None) -> str:
    """Canonical form of a storage spec: ``memory``, ``journal:/abs/path`` or an RDB URL."""
    if spec is None or str(spec).strip() in ("", "memory", ":memory:"):
        return "memory"
    text = str(spec).strip()
    if "://" in text:
        scheme = text.split("://", 1)[0].split("+", 1)[0]
        if scheme not in ("sqlite", "postgresql", "postgres", "mysql", "oracle", "mssql"):
            raise SearchError(f"storage URL {redact_url(text)!r} has scheme {scheme!r}: expected an SQLAlchemy "
                              f"database URL (postgresql://, mysql://, sqlite:///) or one of {', '.join(STORAGE_FORMS)}")
        return text
    if text.startswith("journal:"):
        return "journal:" + str(Path(text[len("journal:"):]).expanduser().resolve())
    path = Path(text).expanduser()
    if path.suffix in JOURNAL_SUFFIXES:
        return "journal:" + str(path.resolve())
    if path.suffix in SQLITE_SUFFIXES:
        return "sqlite:///" + str(path.resolve())
    raise SearchError(f"storage {text!r} is not recognised: expected {', '.join(STORAGE_FORMS)}")


def open_storage(spec: str | Path | BaseStorage | None, *, heartbeat_interval: int | None = HEARTBEAT_INTERVAL_S,
                 grace_period: int | None = None, single_process: bool = False) -> BaseStorage:
    """Open (creating if needed) the storage ``spec`` names (see :func:`storage_url`).

    RDB storages get a heartbeat (``heartbeat_interval`` seconds, None: off): a trial whose
    worker died is failed after ``grace_period`` (default 3 intervals) and retried up to
    3 times. A journal file serves the hosts that see it (one, or those of a shared filesystem),
    an SQLite file one host (:mod:`search._shared_fs` checks both on a cluster); a cluster of
    machines without a shared filesystem needs an RDB such as PostgreSQL. With
    ``single_process`` (no other process writes the study) a journal file is written in
    batches (:class:`BufferedJournalFileBackend`); call :func:`flush_storage` when done.
    """
    if isinstance(spec, BaseStorage):
        return spec
    url = storage_url(spec)
    if url == "memory":
        return InMemoryStorage()
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):])
        if not path.parent.is_dir():
            raise SearchError(f"journal storage {str(path)!r}: folder {str(path.parent)!r} does not exist")
        backend = BufferedJournalFileBackend(str(path)) if single_process else JournalFileBackend(str(path))
        return JournalStorage(backend)
    if url.startswith("sqlite:///"):
        folder = Path(url[len("sqlite:///"):]).parent
        if not folder.is_dir():
            raise SearchError(f"SQLite storage {url!r}: folder {str(folder)!r} does not exist")
    # SQLite serialises writers; wait for the lock instead of failing under several workers.
    # A server that does not answer fails in seconds instead of the driver's default (none).
    engine = ({"connect_args": {"timeout": 60}} if url.startswith("sqlite")
              else {"connect_args": CONNECT_ARGS} if url.startswith("postgres") else None)
    shown, url = redact_url(url), with_password(url)
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna, and what we rely on
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            hb = {}
            if heartbeat_interval is not None:
                hb = dict(heartbeat_interval=heartbeat_interval, grace_period=grace_period or 3 * heartbeat_interval,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
            return RDBStorage(url, engine_kwargs=engine, **hb)
    except (ImportError, ModuleNotFoundError) as e:
        hint = DRIVER_HINTS.get(url.split("://", 1)[0].split("+", 1)[0], "the SQLAlchemy driver the URL names")
        raise SearchError(f"storage {shown!r} needs a database driver that is not installed ({e.name or e}): "
                          f"install {hint}") from None
    except Exception as e:  # connection refused, bad credentials, unknown database ...
        first = _scrub(str(e).strip().splitlines()[0], url) if str(e).strip() else ""
        raise SearchError(f"cannot open storage {shown!r}: {type(e).__name__}: {first}") from None


def is_shared(storage: BaseStorage) -> bool:
    """Whether other processes can open the same storage (everything but in-memory)."""
    return not isinstance(storage, InMemoryStorage)


def has_heartbeat(storage: BaseStorage) -> bool:
    """Whether dead workers' trials are detected (RDB storages with a heartbeat)."""
    return optuna.storages._heartbeat.is_heartbeat_enabled(storage)
