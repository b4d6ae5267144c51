"""Study storages from one string: in-memory, a journal file, an SQLite file or any RDB URL."""

from __future__ import annotations

import atexit
import time
import warnings
import weakref
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import (BaseStorage, InMemoryStorage, JournalStorage, RDBStorage,
                             RetryHeartbeatStaleTrialCallback)
from optuna.storages.journal import BaseJournalBackend, JournalFileBackend

from ._errors import SearchError

JOURNAL_SUFFIXES = (".journal", ".log", ".jsonl")
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
STORAGE_FORMS = ("'memory' (default)", "a journal file (*.journal, *.log)", "an SQLite file (*.db, *.sqlite)",
                 "an RDB URL (postgresql://..., mysql://..., sqlite:///...)")
# A dead worker's trials are failed after HEARTBEAT_GRACE_S without a heartbeat and re-queued.
HEARTBEAT_INTERVAL_S, HEARTBEAT_GRACE_S, MAX_RETRY = 10, 30, 3


class BufferedJournalFileBackend(BaseJournalBackend):
    """A journal file written in batches, for a study that one process owns.

    Optuna's file backend takes a file lock, appends and fsyncs once per operation: 23 times
    per trial in the cifar space, which made a 4,000-trial search 5.3x slower than in memory
    (1.6x buffered; experiments/results/search_storage.md). Here operations collect in memory and go to the
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


def storage_url(spec: str | Path | None) -> str:
    """Canonical form of a storage spec: ``memory``, ``journal:/abs/path`` or an RDB URL."""
    if spec is None or str(spec).strip() in ("", "memory", ":memory:"):
        return "memory"
    text = str(spec).strip()
    if "://" in text:
        scheme = text.split("://", 1)[0].split("+", 1)[0]
        if scheme not in ("sqlite", "postgresql", "postgres", "mysql", "oracle", "mssql"):
            raise SearchError(f"storage URL {text!r} has scheme {scheme!r}: expected an SQLAlchemy database URL "
                              f"(postgresql://, mysql://, sqlite:///) or one of {', '.join(STORAGE_FORMS)}")
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
    3 times. Journal files are for one host; a cluster needs an RDB such as PostgreSQL. With
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
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna, and what we rely on
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            hb = {}
            if heartbeat_interval is not None:
                hb = dict(heartbeat_interval=heartbeat_interval, grace_period=grace_period or 3 * heartbeat_interval,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
            return RDBStorage(url, engine_kwargs=engine, **hb)
    except (ImportError, ModuleNotFoundError) as e:
        raise SearchError(f"storage {url!r} needs a database driver that is not installed ({e.name or e}): "
                          "install it (e.g. psycopg2-binary for postgresql://)") from None
    except Exception as e:  # connection refused, bad credentials, unknown database ...
        raise SearchError(f"cannot open storage {url!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None


def is_shared(storage: BaseStorage) -> bool:
    """Whether other processes can open the same storage (everything but in-memory)."""
    return not isinstance(storage, InMemoryStorage)


def is_single_host(url: str) -> bool:
    """Journal and SQLite files only work among processes of one machine."""
    return url.startswith("journal:") or url.startswith("sqlite")


def has_heartbeat(storage: BaseStorage) -> bool:
    """Whether dead workers' trials are detected (RDB storages with a heartbeat)."""
    return optuna.storages._heartbeat.is_heartbeat_enabled(storage)
