"""``hwnas status RUN_DIR``: each stage of a run folder (done, running, interrupted, pending), the
progress of a running stage read from its files (training epochs, accuracy rows, latency blocks,
search trials from the study storage, networks trained alone), and the Ray cluster a run uses, where it recorded one.

Light on purpose (no torch; Optuna only to read a study, Ray never): it must answer at once while a
run holds the machine."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from pathlib import Path

from hwnas.stages import RUNNING, STAGES, lock_holder, output_path, read_manifest
from search_space.errors import UserError
from search_space.io import atomic_write_json

RAY_INFO = "ray.json"
DASHBOARD_TIMEOUT_S = 2


class StorageUnreachable(UserError):
    """The study storage of a running search cannot be read (the status is shown without it)."""


def _jsonl_rows(path: Path) -> int:
    """Records of a JSONL file with a header line (accuracy datasets); 0 when absent."""
    try:
        with open(path, "rb") as f:
            return max(0, sum(1 for line in f if line.strip()) - 1)
    except OSError:
        return 0


def _last_json_line(path: Path) -> dict:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:  # a line being written
            continue
    return {}


def train_progress(out: Path, inputs: dict) -> str:
    """Epochs done (``supernet/metrics.jsonl``) of the planned ones or of the time budget."""
    train = inputs.get("train", {})
    last = _last_json_line(out / "supernet" / "metrics.jsonl")
    done = last.get("epoch", 0)
    if train.get("time_budget_min") is not None:
        return f"epoch {done} (time budget {train['time_budget_min']} min)"
    return f"epoch {done} of {train.get('epochs', '?')}"


def latency_progress(out: Path, inputs: dict) -> str:
    """Per device: blocks measured and calibration nets of its table (written as it builds)."""
    parts = []
    calibration = inputs.get("latency", {}).get("calibration", "?")
    for d in inputs.get("devices", []):
        try:
            table = json.loads((out / "tables" / f"{d['name']}.json").read_text())
        except (OSError, ValueError):
            parts.append(f"{d['name']}: not started")
            continue
        parts.append(f"{d['name']}: {len(table.get('blocks', {}))} blocks, "
                     f"{len(table.get('calibration_nets', []))} of {calibration} calibration nets")
    return "; ".join(parts)


def accuracy_progress(out: Path, inputs: dict) -> str:
    """Subnets measured into the fit and held-out accuracy datasets."""
    fit = _jsonl_rows(out / "predictor" / "accuracy_fit.jsonl")
    holdout = _jsonl_rows(out / "predictor" / "accuracy_holdout.jsonl")
    total = inputs.get("archs", "?")
    return f"fit {fit} of {total} subnets, held-out {holdout}" + (
        f" of {inputs['holdout']}" if inputs.get("holdout") is not None else "")


def search_progress(out: Path, inputs: dict) -> str:
    """Completed and running trials of the search's study, read from its storage (the run's
    journal file, or the storage its config names)."""
    search = inputs.get("search", {})
    if search.get("rounds"):
        return rounds_progress(out, search)
    total = search.get("trials", "?")
    spec = search.get("storage") or (out / "search" / "study.journal")
    if isinstance(spec, Path) and not spec.exists():
        return f"0 of {total} trials"
    from optuna.trial import TrialState

    from search._errors import SearchError
    from search._storage import open_storage
    from search._urls import redact_url

    try:
        storage = open_storage(spec, heartbeat_interval=None)
        studies = [s for s in storage.get_all_studies() if search.get("study") in (None, s.study_name)]
        trials = {s.study_name: storage.get_all_trials(s._study_id, deepcopy=False) for s in studies}
    except SearchError as e:
        raise StorageUnreachable(str(e)) from None
    except Exception as e:  # noqa: BLE001 - a server that went away while reading: one line all the same
        raise StorageUnreachable(f"cannot read storage {redact_url(str(spec))!r}: {type(e).__name__}") from None
    if not trials:
        return f"0 of {total} trials (no study yet)"
    # A storage shared by several runs, no study name recorded: the study that started a trial last.
    name = max(trials, key=lambda n: max((t.datetime_start.timestamp() for t in trials[n] if t.datetime_start),
                                         default=0.0))
    counts = dict.fromkeys(TrialState, 0)
    for t in trials[name]:
        counts[t.state] += 1
    return ((f"study {name!r}: " if len(trials) > 1 else "")
            + f"{counts[TrialState.COMPLETE]} of {total} trials completed, {counts[TrialState.RUNNING]} running"
            + (f", {counts[TrialState.FAIL]} failed" if counts[TrialState.FAIL] else ""))


def rounds_progress(out: Path, search: dict) -> str:
    """A search in rounds: the last finished round and the subnets measured of the query budget
    (``search/measured.json``, rewritten after every round)."""
    path = out / "search" / "measured.json"
    queries, rounds = search.get("queries", "?"), search["rounds"]
    try:
        log = json.loads(path.read_text())["log"]
    except (OSError, ValueError, KeyError):
        return f"in rounds: 0 of {queries} subnets measured"
    last = log[-1] if log else {}
    return (f"in rounds: round {last.get('round', 0)} of {rounds} done, {last.get('total', 0)} of {queries} subnets "
            "measured")


def final_progress(out: Path, inputs: dict) -> str:
    """Networks trained alone so far, by role (``final/results.json``, rewritten after each), and the last."""
    try:
        models = list(json.loads((out / "final" / "results.json").read_text())["models"].values())
    except (OSError, ValueError, KeyError, AttributeError):
        return "0 networks trained"
    roles: dict[str, int] = {}
    for m in models:
        roles[m.get("role", "?")] = roles.get(m.get("role", "?"), 0) + 1
    text = f"{len(models)} networks trained (" + ", ".join(f"{n} {role}" for role, n in roles.items()) + ")"
    if models:
        last = models[-1]
        text += f"; last: {last.get('role')} {last.get('label')} ({last.get('init')}), val {last.get('val', 0):.4f}"
    return text


PROGRESS = {"train": train_progress, "latency": latency_progress, "accuracy": accuracy_progress,
            "search": search_progress, "final": final_progress}


def record_cluster(out_dir: Path) -> Path | None:
    """Write ``out_dir/ray.json``: the Ray cluster this process joined (address, dashboard URL,
    nodes with their devices), for ``hwnas status``. Call after Ray is initialised; no-op without."""
    import ray

    if not ray.is_initialized():
        return None
    nodes = [{"node_id": n["NodeID"], "host": n.get("NodeManagerAddress"), "alive": n.get("Alive"),
              "devices": sorted(k.split(":", 1)[1] for k in n.get("Resources", {}) if k.startswith("device:")),
              "cpus": n.get("Resources", {}).get("CPU", 0), "gpus": n.get("Resources", {}).get("GPU", 0)}
             for n in ray.nodes()]
    context = ray.get_runtime_context()
    url = ray._private.worker.get_dashboard_url() if hasattr(ray, "_private") else ""
    info = {"address": context.gcs_address, "dashboard_url": f"http://{url}" if url and "://" not in url else url,
            "recorded": time.strftime("%Y-%m-%d %H:%M:%S"), "nodes": nodes}
    return atomic_write_json(Path(out_dir) / RAY_INFO, info)


def _running_tasks(dashboard: str) -> dict[str, dict[str, int]]:
    """Running Ray tasks per node id and task name, from the dashboard's state API."""
    query = urllib.parse.urlencode({"limit": 10000, "detail": "false", "filter_keys": "state",
                                    "filter_predicates": "=", "filter_values": "RUNNING"})
    with urllib.request.urlopen(f"{dashboard.rstrip('/')}/api/v0/tasks?{query}", timeout=DASHBOARD_TIMEOUT_S) as r:
        tasks = json.loads(r.read())["data"]["result"]["result"]
    per_node: dict[str, dict[str, int]] = {}
    for t in tasks:
        names = per_node.setdefault(t.get("node_id") or "?", {})
        names[t.get("name", "?")] = names.get(t.get("name", "?"), 0) + 1
    return per_node


def cluster_lines(out: Path) -> list[str]:
    """The Ray cluster recorded by the run (``ray.json`` in the run folder or a stage's folder):
    dashboard link and nodes, with the tasks running on each where the dashboard answers."""
    found = [p for p in (out / RAY_INFO, *sorted(out.glob(f"*/{RAY_INFO}"))) if p.exists()]
    if not found:
        return []
    info = json.loads(max(found, key=lambda p: p.stat().st_mtime).read_text())
    lines = [f"Ray cluster {info.get('address')} (recorded {info.get('recorded')}): "
             f"dashboard {info.get('dashboard_url') or 'not running'}"]
    work, note = {}, ""
    if info.get("dashboard_url"):
        try:
            work = _running_tasks(info["dashboard_url"])
        except (OSError, ValueError, KeyError) as e:
            note = f" (dashboard not answering: {type(e).__name__})"
    for n in info.get("nodes", []):
        tasks = ", ".join(f"{k} x{v}" for k, v in sorted(work.get(n["node_id"], {}).items()))
        lines.append(f"  node {n['node_id'][:8]} {n.get('host')}: devices {', '.join(n['devices']) or '-'}, "
                     f"{n.get('cpus', 0):g} CPU, {n.get('gpus', 0):g} GPU"
                     + ("" if n.get("alive", True) else ", dead") + (f"; running: {tasks}" if tasks else ""))
    return lines + ([f"  tasks per node unknown{note}"] if note else [])


def status(out_dir: str | Path) -> tuple[list[str], str | None]:
    """The lines of ``hwnas status``, and the one-line error of a progress that could not be read
    (an unreachable study storage), or None."""
    out = Path(out_dir)
    if not out.is_dir():
        raise UserError(f"run folder {str(out)!r} does not exist: expected the --out of an hwnas run")
    manifest = read_manifest(out)
    holder = lock_holder(out)
    if not manifest and holder is None and not (out / "invocations.json").exists():
        raise UserError(f"{str(out)!r} is not an hwnas run folder (no manifest.json): expected the --out of hwnas run")
    if holder is not None:
        head = (f"{out}: running (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since "
                f"{holder.get('started', '?')}: hwnas {' '.join(holder.get('command', []))})")
    else:
        runs = json.loads((out / "invocations.json").read_text()) if (out / "invocations.json").exists() else []
        head = f"{out}: not running" + (f"; last run {runs[-1]['status']} at {runs[-1]['ended']}" if runs else "")
    lines, error = [head, "", f"{'stage':<10} {'state':<12} {'seconds':>9}  details"], None
    for name in STAGES:
        record = manifest.get(name)
        if record is None:
            lines.append(f"{name:<10} pending")
            continue
        if record.get("state") == RUNNING:
            state = "running" if holder is not None else "interrupted"
            seconds = f"{time.time() - record.get('started_unix', time.time()):.1f}" if holder is not None else "-"
            detail = f"since {record.get('started')}" if holder is not None else f"started {record.get('started')}"
            if name in PROGRESS:
                try:
                    detail += "; " + PROGRESS[name](out, record.get("inputs", {}))
                except StorageUnreachable as e:
                    error = str(e)
                    detail += "; progress unknown (storage unreachable)"
            lines.append(f"{name:<10} {state:<12} {seconds:>9}  {detail}")
            continue
        missing = [p for p in record["outputs"] if not output_path(out, p).exists()]
        state = "done" if not missing else "outputs gone"
        shown = missing or record["outputs"]
        detail = ", ".join(shown[:3]) + (f" (+{len(shown) - 3})" if len(shown) > 3 else "")
        lines.append(f"{name:<10} {state:<12} {record.get('seconds', 0):>9.1f}  {detail}")
    cluster = cluster_lines(out)
    return lines + ([""] + cluster if cluster else []), error
