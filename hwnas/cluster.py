"""``hwnas run`` on a Ray cluster: the stages' work as Ray tasks, their results in the driver's
run folder.

- Latency: each device's table is built and validated by one task that asks for the device's
  ``device:NAME`` resource, so it runs on the node that owns the device; all devices at once.
  The node works in a scratch folder of its own (a retried task resumes there) and returns the
  files; the driver writes them atomically, so the cluster needs no shared filesystem.
- Accuracy: the subnets still to measure are dealt into shards, each measured by a task (one
  CPU, or one GPU) on the checkpoint sent through Ray's object store; every finished shard is
  merged into the dataset file at once, so an interrupted stage redoes only unfinished shards.

- Search: workers open the study storage on their nodes; a journal or SQLite file there must be
  the driver's file (a shared filesystem), which :func:`check_shared_inputs` checks before any
  work, as it checks that a dataset given by path (``dataset.path``) is on every node. The
  verification's accuracy runs like an accuracy shard (:class:`ClusterCheckpointAccuracy`).

Nodes import ``hwnas`` themselves: start them (``ray start``) where it is installed, or submit
the run as a Ray job with ``--working-dir`` (README, "Scale-out").
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Sequence

from search._ray import DEVICE_PREFIX, _ray, require_resources, task_options
from search_space.errors import UserError
from search_space.io import atomic_write_bytes, atomic_write_json

TASK_RETRIES = 2  # a task whose node or process died runs again (it resumes from its scratch files)


def check_devices(devices: Sequence[dict]) -> None:
    """One line, before any work, for a configured device that no alive node owns."""
    for d in devices:
        require_resources(f"latency device {d['name']!r}", {DEVICE_PREFIX + d["name"]: 1})


def node_info() -> dict:
    """The Ray node (id, host name) this process runs on, recorded with the work done there."""
    return {"node_id": _ray().get_runtime_context().get_node_id(), "host": socket.gethostname()}


def _scratch(*parts: str) -> Path:
    """A folder in this node's temporary directory named by ``parts``: a retried task finds its
    partial work there."""
    from hwnas.stages import digest

    folder = Path(tempfile.gettempdir()) / "hwnas-cluster" / digest(parts)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _raise_user_errors(ray, error: Exception) -> None:
    """A user error inside a task is still a user error on the driver (one line, exit code 2)."""
    if isinstance(error, ray.exceptions.RayTaskError) and isinstance(error.cause, UserError):
        raise error.cause from None
    raise error


# ---- latency tables ---------------------------------------------------------------------

def _table_task(space, device: dict, latency: dict, seed: int, scratch: str, reused: bytes | None) -> dict:
    """Ray task: build and validate ``device``'s table on this node; returns its files (bytes),
    the validation summary and the node."""
    from hwnas.pipeline import build_and_validate

    wall, cpu = time.perf_counter(), time.process_time()
    folder = _scratch(scratch)
    if reused is not None:  # the driver's table to reuse, sent along: its path may not exist on this node
        device = {**device, "table": str(atomic_write_bytes(folder / "reused.json", reused))}
    summary = build_and_validate(space, device, latency, seed, folder)
    # the task's own time: CPU seconds well below wall seconds say that the node's cores were shared
    summary.update(task_seconds=round(time.perf_counter() - wall, 2), task_cpu_seconds=round(time.process_time() - cpu, 2))
    table = folder / f"{device['name']}.json"
    data = json.loads(table.read_text())
    data["build"]["node"] = node_info()  # where the table was measured, for the run's record
    atomic_write_json(table, data)
    files = [table] + [folder / f for f in summary["files"].values() if f]
    return {"summary": summary, "node": data["build"]["node"], "files": {p.name: p.read_bytes() for p in files}}


def build_tables_on_cluster(space, devices: Sequence[dict], latency: dict, seed: int, folder: Path,
                            run_id: str) -> dict[str, dict]:
    """Build and validate every device's table on the node owning it, all devices in parallel;
    write each one's table and validation report into ``folder`` as it finishes. A device done
    by an interrupted call with the same settings is not redone. Returns name -> summary."""
    from hwnas.stages import digest
    from latency_tables.table import resolve_table_path

    ray = _ray()
    check_devices(devices)
    folder.mkdir(parents=True, exist_ok=True)
    results, refs = {}, {}
    for d in devices:
        key = digest({"device": d, "latency": latency, "seed": seed, "space": space.fingerprint})
        record = folder / f".{d['name']}.cluster.json"
        done = json.loads(record.read_text()) if record.exists() else {}
        if done.get("key") == key and all((folder / f).exists() for f in done["files"]):
            results[d["name"]] = done["summary"]
            continue
        task = ray.remote(_table_task).options(**task_options({"CPU": 1, DEVICE_PREFIX + d["name"]: 1}),
                                               max_retries=TASK_RETRIES, name=f"hwnas latency {d['name']}")
        reused = resolve_table_path(d["table"]).read_bytes() if d["table"] is not None else None
        refs[task.remote(space, d, latency, seed, f"{run_id}/{d['name']}/{key}", reused)] = (d, key, record)
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        d, key, record = refs[ready[0]]
        try:
            out = ray.get(ready[0])
        except Exception as e:  # noqa: BLE001 - re-raised, user errors as themselves
            for r in pending:
                ray.cancel(r)
            _raise_user_errors(ray, e)
        for name, blob in out["files"].items():
            atomic_write_bytes(folder / name, blob)
        summary = {**out["summary"], "table": str(folder / f"{d['name']}.json"), "node": out["node"], "reused": d["table"],
                   "report": str(folder / out["summary"]["files"]["md"])}
        atomic_write_json(record, {"key": key, "files": sorted(out["files"]), "summary": summary})
        results[d["name"]] = summary
    return results


def _time_task(device: dict, items: list) -> list:
    """Ray task: time ``items`` (model, input shape) with ``device``'s backend on this node."""
    from hwnas.run_config import device_backend

    return device_backend(device).measure_many(items)


def time_models(device: dict, items: list) -> list:
    """Time ``items`` (model, input shape) on the node owning ``device``, as
    ``backend.measure_many`` does on this machine; returns their timing statistics."""
    ray = _ray()
    require_resources(f"latency device {device['name']!r}", {DEVICE_PREFIX + device["name"]: 1})
    task = ray.remote(_time_task).options(**task_options({"CPU": 1, DEVICE_PREFIX + device["name"]: 1}),
                                          max_retries=TASK_RETRIES, name=f"hwnas final timing {device['name']}")
    try:
        return ray.get(task.remote(device, items))
    except Exception as e:  # noqa: BLE001 - re-raised, user errors as themselves
        _raise_user_errors(ray, e)


# ---- accuracy datasets ------------------------------------------------------------------

def _shard_task(space, checkpoint: bytes, checkpoint_hash: str, archs: list[str], device: str,
                settings: dict) -> tuple[dict, list[dict]]:
    """Ray task: measure ``archs`` on the checkpoint (sent as bytes); returns the dataset
    header and the records."""
    from hwnas.accuracy import measure_accuracy_dataset

    folder = _scratch("checkpoints")
    path = folder / f"{checkpoint_hash}.pt"
    if not path.exists():  # one copy per node, shared by its shards
        atomic_write_bytes(path, checkpoint)
    fd, out = tempfile.mkstemp(suffix=".jsonl", dir=folder)
    os.close(fd)
    os.unlink(out)  # a fresh dataset file: only this shard's archs
    try:
        data = measure_accuracy_dataset(path, [space.parse(a) for a in archs], out, device=device, progress=False,
                                        **settings)
    finally:
        Path(out).unlink(missing_ok=True)
    return data.header, data.records


def cluster_slots(gpu: bool) -> int:
    """GPUs (or CPUs) of the alive nodes: how many shards can run at once."""
    return max(1, int(_ray().cluster_resources().get("GPU" if gpu else "CPU", 1)))


def measure_accuracy_on_cluster(space, checkpoint: Path, n: int, out: Path, *, seed: int, extremes: bool, gpu: bool,
                                settings: dict, shards: int | None = None) -> int:
    """Measure the accuracy dataset ``out`` (``n`` spread-sampled subnets, as ``hwnas predictor
    dataset`` samples them) in ``shards`` Ray tasks (default: two per GPU, or CPU, of the
    cluster), each on one GPU (``gpu``) or CPU. Resumable: every finished shard is merged into
    ``out`` at once and a re-run measures only the subnets still missing. Returns the number of
    subnets measured by this call."""
    from predictors.accuracy_dataset import AccuracyDataset, _check_resumable, archs_to_measure
    from search_space import checkpoint_hash

    ray = _ray()
    data = AccuracyDataset.load(out) if out.exists() else None
    todo = [str(a) for a in archs_to_measure(space, n, data.records if data else [], seed=seed, extremes=extremes)]
    if not todo:
        return 0
    if gpu:
        require_resources("the accuracy stage (device cuda)", {"GPU": 1})
    k = min(len(todo), shards or 2 * cluster_slots(gpu))
    ckpt = ray.put(checkpoint.read_bytes())  # once in the object store, fetched by each node
    task = ray.remote(_shard_task).options(**task_options({"GPU": 1, "CPU": 1} if gpu else {"CPU": 1}),
                                           max_retries=TASK_RETRIES, name=f"hwnas accuracy {out.stem}")
    chash = checkpoint_hash(checkpoint)
    # dealt round-robin: the sample runs from small to large subnets, so every shard gets a mix
    pending = [task.remote(space, ckpt, chash, todo[i::k], "cuda" if gpu else "cpu", settings) for i in range(k)]
    order = {a: i for i, a in enumerate(todo)}
    before, measured = len(data.records) if data else 0, 0
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        try:
            header, records = ray.get(ready[0])
        except Exception as e:  # noqa: BLE001 - re-raised, user errors as themselves
            for r in pending:
                ray.cancel(r)
            _raise_user_errors(ray, e)
        fresh = AccuracyDataset(header, [])
        if data is None:
            data = fresh
        else:
            _check_resumable(data, fresh, out)
        data.records += records
        data.save(out)  # atomic: a finished shard is never measured again
        measured += len(records)
    data.records[before:] = sorted(data.records[before:], key=lambda r: order[r["arch"]])  # as measured in one process
    data.save(out)
    return measured


class ClusterCheckpointAccuracy:
    """Verification's accuracy on a cluster: the archs not yet in ``out`` (a resumable accuracy
    dataset in the driver's run folder) are measured by a Ray task on one GPU (``gpu``) or CPU,
    on the checkpoint sent through the object store, as an accuracy shard is; the records are
    merged into ``out``. Runs on the driver (an objective without resources), so no node needs
    the run folder. ``settings``: :func:`hwnas.accuracy.measure_accuracy_dataset` options."""

    def __init__(self, space, checkpoint: str | Path, out: str | Path, *, gpu: bool, settings: dict):
        from search_space import checkpoint_hash

        self.space, self.out, self.gpu, self.settings = space, Path(out), gpu, dict(settings)
        if gpu:
            require_resources("the verification's accuracy (device cuda)", {"GPU": 1})
        self.hash = checkpoint_hash(checkpoint)
        self.checkpoint = _ray().put(Path(checkpoint).read_bytes())  # once, fetched by the node measuring

    def __call__(self, archs) -> list[float]:
        from predictors.accuracy_dataset import AccuracyDataset, AccuracyDatasetError, _check_resumable

        ray = _ray()
        data = AccuracyDataset.load(self.out) if self.out.exists() else None
        if data is not None and data.header.get("checkpoint_hash") != self.hash:
            raise AccuracyDatasetError(f"{str(self.out)!r} was built with checkpoint_hash="
                                       f"{data.header.get('checkpoint_hash')!r}, this run has checkpoint_hash="
                                       f"{self.hash!r}: expected the same to resume; choose another output file")
        done = {r["arch"] for r in data.records} if data else set()
        todo = list(dict.fromkeys(str(a) for a in archs if str(a) not in done))
        if todo:
            task = ray.remote(_shard_task).options(**task_options({"GPU": 1, "CPU": 1} if self.gpu else {"CPU": 1}),
                                                   max_retries=TASK_RETRIES, name=f"hwnas verify accuracy {self.out.stem}")
            try:
                header, records = ray.get(task.remote(self.space, self.checkpoint, self.hash, todo,
                                                      "cuda" if self.gpu else "cpu", self.settings))
            except Exception as e:  # noqa: BLE001 - re-raised, user errors as themselves
                _raise_user_errors(ray, e)
            fresh = AccuracyDataset(header, [])
            if data is None:
                data = fresh
            else:
                _check_resumable(data, fresh, self.out)
            data.records += records
            data.save(self.out)
        accuracy = {r["arch"]: r["accuracy"] for r in data.records}
        return [accuracy[str(a)] for a in archs]


def check_shared_inputs(storage: str | None, storage_setting: str, dataset_path: str | None) -> None:
    """Before any work on the cluster, in one line naming the setting: a journal or SQLite study
    ``storage`` (None: the search runs on the driver) that the search workers' nodes could not
    share, or a ``dataset_path`` that a node measuring accuracy does not have."""
    from search._shared_fs import check_readable_everywhere, check_storage_shared
    from search._storage import storage_url
    from search._urls import redact_url

    if storage is not None:
        url = storage_url(storage)
        check_storage_shared(url, redact_url(url), storage_setting)
    if dataset_path:
        check_readable_everywhere(Path(dataset_path).expanduser().resolve(), "dataset.path",
                                  "the accuracy tasks read it")
