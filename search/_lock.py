"""One driver per study: :func:`study_lock` refuses a second ``run_search`` on the same storage and
study name before it touches a trial. (At start a driver fails the RUNNING trials it finds, taking
them for an interrupted run's: a second driver would fail the first one's live trials.)

Files (journal, SQLite) are locked with ``flock`` on a file beside them, PostgreSQL with a
session advisory lock, MySQL with ``GET_LOCK``: all are released by the kernel or the server
when the driver's process dies, so a killed driver never leaves a stale lock."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from pathlib import Path
from typing import Iterator

from search_space import locks

from ._errors import SearchError
from ._storage import CONNECT_ARGS, _scrub, with_password


def lock_file(path: Path, study_name: str) -> Path:
    """The lock file of study ``study_name`` in the storage file ``path``: one per study, since a
    file can hold several studies (a readable name plus a hash, so no two names share one)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", study_name)[:80]
    return path.with_name(f"{path.name}.{safe}-{_key(study_name) & 0xffffffff:08x}.lock")


def _key(study_name: str) -> int:
    """A signed 64-bit key for the study (PostgreSQL advisory locks take a bigint)."""
    return int.from_bytes(hashlib.sha256(f"hwnas-study:{study_name}".encode()).digest()[:8], "big", signed=True)


def _refused(study_name: str, shown: str, who: str) -> SearchError:
    return SearchError(f"study {study_name!r} in storage {shown!r} is in use by another hwnas search ({who}): "
                       "wait for it to end, or pass another --study name")


@contextlib.contextmanager
def study_lock(url: str, study_name: str, shown: str) -> Iterator[None]:
    """Hold the driver lock of ``study_name`` in the storage ``url`` (canonical, see
    :func:`search._storage.storage_url`; ``shown`` is the URL without its password) while the
    block runs. In-memory studies and other databases need none or get none."""
    if url.startswith("journal:") or url.startswith("sqlite:///"):
        path = Path(url.split(":", 1)[1] if url.startswith("journal:") else url[len("sqlite:///"):])
        with _file_lock(lock_file(path, study_name), study_name, shown):
            yield
    elif url.startswith("postgres") or url.startswith("mysql"):
        with _database_lock(url, study_name, shown):
            yield
    else:
        yield


@contextlib.contextmanager
def _file_lock(path: Path, study_name: str, shown: str) -> Iterator[None]:
    try:
        with locks.file_lock(path):
            yield
    except locks.LockHeld as e:
        raise _refused(study_name, shown, str(e)) from None


@contextlib.contextmanager
def _database_lock(url: str, study_name: str, shown: str) -> Iterator[None]:
    """A session lock on a connection of its own, held open while the driver runs."""
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    postgres = url.startswith("postgres")
    real = with_password(url)
    try:
        engine = sqlalchemy.create_engine(real, poolclass=NullPool, connect_args=CONNECT_ARGS if postgres else {})
        conn = engine.connect()
    except Exception as e:  # the storage opened a moment ago: a rare failure, still one line
        first = _scrub(str(e).strip().splitlines()[0], real) if str(e).strip() else ""
        raise SearchError(f"cannot lock study {study_name!r} in storage {shown!r}: {type(e).__name__}: "
                          f"{first}") from None
    try:
        if postgres:
            key = _key(study_name)
            got = conn.execute(sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
            if not got:
                # The holder's session: an advisory lock on a bigint keeps its high half in classid, low in objid.
                row = conn.execute(sqlalchemy.text(
                    "SELECT a.pid, a.client_addr, a.backend_start FROM pg_locks l JOIN pg_stat_activity a "
                    "ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :hi "
                    "AND l.objid = :lo LIMIT 1"), {"hi": (key >> 32) & 0xffffffff, "lo": key & 0xffffffff}).first()
                who = (f"server session {row[0]} from {row[1] or 'local socket'}, since {row[2]:%Y-%m-%d %H:%M:%S}"
                       if row else "another server session")
                raise _refused(study_name, shown, who)
        else:
            name = f"hwnas-study:{study_name}"[:64]  # MySQL's limit for a lock name
            got = conn.execute(sqlalchemy.text("SELECT GET_LOCK(:k, 0)"), {"k": name}).scalar()
            if got != 1:
                raise _refused(study_name, shown, "another server session")
        conn.commit()  # leave no transaction open for the whole search (session locks outlive it)
        yield
    finally:
        conn.close()  # ends the session: the server drops its locks
        engine.dispose()


@contextlib.contextmanager
def evaluation_lock(url: str, study_name: str) -> Iterator[None]:
    """Wait for, then hold, the evaluation lock of ``study_name`` in the storage ``url`` (with its
    password) while the block runs: the workers of a search bounded by ``max_evaluations`` claim
    their next evaluations under it, one worker at a time (:mod:`search._loop`). A file lock
    beside a journal or SQLite file, a PostgreSQL advisory lock or a MySQL named lock, each
    released by the kernel or the server if its process dies; none for other storages (one
    process)."""
    name = f"{study_name}:evaluations"
    if url.startswith("journal:") or url.startswith("sqlite:///"):
        path = Path(url.split(":", 1)[1] if url.startswith("journal:") else url[len("sqlite:///"):])
        fd = os.open(lock_file(path, name), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # blocks: the holder claims and lets go within a moment
            yield
        finally:
            os.close(fd)  # releases the lock
    elif url.startswith("postgres") or url.startswith("mysql"):
        import sqlalchemy
        from sqlalchemy.pool import NullPool

        postgres = url.startswith("postgres")
        engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args=CONNECT_ARGS if postgres else {})
        lock, unlock, key = (("SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)", _key(name)) if postgres
                             else ("SELECT GET_LOCK(:k, -1)", "SELECT RELEASE_LOCK(:k)", f"hwnas-eval:{study_name}"[:64]))
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text(lock), {"k": key})
                conn.commit()
                try:
                    yield
                finally:
                    conn.execute(sqlalchemy.text(unlock), {"k": key})
                    conn.commit()
        finally:
            engine.dispose()
    else:
        yield
