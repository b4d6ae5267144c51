"""Study storages from one string: in-memory, a journal file, an SQLite file or any RDB URL."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from optuna.storages import (BaseStorage, InMemoryStorage, JournalStorage, RDBStorage,
                             RetryHeartbeatStaleTrialCallback)
from optuna.storages.journal import JournalFileBackend

from ._errors import SearchError

JOURNAL_SUFFIXES = (".journal", ".log", ".jsonl")
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
STORAGE_FORMS = ("'memory' (default)", "a journal file (*.journal, *.log)", "an SQLite file (*.db, *.sqlite)",
                 "an RDB URL (postgresql://..., mysql://..., sqlite:///...)")
# A dead worker's trials are failed after HEARTBEAT_GRACE_S without a heartbeat and re-queued.
HEARTBEAT_INTERVAL_S, HEARTBEAT_GRACE_S, MAX_RETRY = 10, 30, 3


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
                 grace_period: int | None = None) -> BaseStorage:
    """Open (creating if needed) the storage ``spec`` names (see :func:`storage_url`).

    RDB storages get a heartbeat (``heartbeat_interval`` seconds, None: off): a trial whose
    worker died is failed after ``grace_period`` (default 3 intervals) and retried up to
    3 times. Journal files are for one host; a cluster needs an RDB such as PostgreSQL.
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
        return JournalStorage(JournalFileBackend(str(path)))
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
