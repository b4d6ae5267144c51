"""``hwnas run`` interrupted in every long stage, then resumed: SIGINT or SIGKILL while training,
building the latency table, measuring the accuracy dataset and searching (the moment is found with
``hwnas status``: the stage running and its progress), a re-run after each. Checked: the killed
stage resumes its own work (its log says ``(resuming)``, no finished stage is redone: their manifest
records keep their finish time), the run completes, and a last re-run is a no-op (every stage up
to date). Then the defect of issue 22: after a config change (more search trials) the search is
redone, SIGKILLed mid-way, and the re-run must keep the trials finished before the kill.

Setting: the tiny digits run of tests/test_pipeline.py (4 epochs, one CPU table, 2000 trials).

    PYTHONPATH=.:tests python experiments/bench_interrupt_resume.py

Writes experiments/results/resume/interrupt_resume.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "experiments"), str(ROOT / "tests")]
import yaml  # noqa: E402

from bench_search_common import RESULTS, facts  # noqa: E402
from hwnas.run_status import status  # noqa: E402
from hwnas.stages import STAGES  # noqa: E402
from test_pipeline import TINY_RUN  # noqa: E402

# (stage, signal, progress needed before the signal: a regex on the stage's status detail, a minimum)
TRIALS_AFTER = 8000
PLAN = [("train", signal.SIGINT, r"epoch (\d+) of", 1), ("latency", signal.SIGKILL, r"cpu: (\d+) blocks", 1),
        ("accuracy", signal.SIGINT, r"fit (\d+) of", 5), ("search", signal.SIGKILL, r"(\d+) of \d+ trials completed", 300)]


def start(cfg: Path, out: Path, log: Path) -> subprocess.Popen:
    """``hwnas run`` in a process of its own, SIGINT at its default (a background shell ignores it)."""
    return subprocess.Popen([sys.executable, "-m", "hwnas", "run", "--config", str(cfg), "--out", str(out)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "w"),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def running(out: Path) -> tuple[str, str]:
    """The running stage and its status detail ('' if none), from ``hwnas status``."""
    try:
        lines, _ = status(out)
    except Exception:  # noqa: BLE001 - the folder is being made
        return "", ""
    for line in lines:
        parts = line.split(None, 3)
        if len(parts) >= 2 and parts[0] in STAGES and parts[1] == "running":
            return parts[0], parts[3] if len(parts) > 3 else ""
    return "", ""


def interrupt_when(proc, out: Path, stage: str, sig, pattern: str, minimum: int, timeout_s: float = 600) -> dict:
    """Send ``sig`` once ``stage`` runs with progress >= ``minimum``; returns what status said."""
    start_t = time.monotonic()
    while proc.poll() is None and time.monotonic() - start_t < timeout_s:
        name, detail = running(out)
        m = re.search(pattern, detail) if name == stage else None
        if m and int(m.group(1)) >= minimum:
            proc.send_signal(sig)
            proc.wait(120)
            return {"stage": stage, "signal": sig.name, "detail": detail, "rc": proc.returncode}
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"stage {stage} never reached {minimum} ({pattern}); the run ended with {proc.poll()}")


def finished(out: Path) -> dict:
    """Finish time of every finished stage record."""
    manifest = json.loads((out / "manifest.json").read_text())
    return {k: v["finished"] for k, v in manifest.items() if v.get("state") != "running"}


def main() -> int:
    """Interrupt every long stage once, resume; then the config-change case; write the results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(RESULTS / "resume" / "interrupt_resume"), help="results stem")
    args = ap.parse_args()
    before = facts()
    folder = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    cfg, out = folder / "run.yaml", folder / "run"
    run = {**TINY_RUN, "train": {**TINY_RUN["train"], "epochs": 4},
           "latency": {**TINY_RUN["latency"], "devices": TINY_RUN["latency"]["devices"][:1]},
           "search": {**TINY_RUN["search"], "trials": 2000}}  # long enough to be killed mid-way
    cfg.write_text(yaml.safe_dump(run))
    steps, failures = [], []
    for i, (stage, sig, pattern, minimum) in enumerate(PLAN):
        done_before = finished(out) if (out / "manifest.json").exists() else {}
        proc = start(cfg, out, folder / f"log{i}")
        step = interrupt_when(proc, out, stage, sig, pattern, minimum)
        resumed = start(cfg, out, folder / f"resume{i}")
        # let the resumed call pass the killed stage (or end), then stop it at the next stage's start
        nxt = PLAN[i + 1][0] if i + 1 < len(PLAN) else None
        while resumed.poll() is None and (nxt is None or running(out)[0] != nxt):
            time.sleep(0.2)
        if resumed.poll() is None:
            resumed.send_signal(signal.SIGINT)
            resumed.wait(120)
        log = (folder / f"resume{i}").read_text()
        kept = {k: v for k, v in done_before.items() if finished(out).get(k) == v}
        step.update(resumed_rc=resumed.returncode, resuming=f"{stage} (resuming) ..." in log,
                    finished_kept=sorted(kept), finished_before=sorted(done_before))
        # the resumed call ends by its own SIGINT at the next stage (130) or finishes (0): anything else failed
        if not step["resuming"] or kept != done_before or resumed.returncode not in (0, 130, -signal.SIGINT):
            failures.append(step)
        steps.append(step)
        print(step, flush=True)
    final = start(cfg, out, folder / "final")
    final.wait()
    last = start(cfg, out, folder / "noop")
    last.wait()
    noop = (folder / "noop").read_text().count("up to date, skipped")
    whole = {"final_rc": final.returncode, "noop_rc": last.returncode, "noop_stages_skipped": noop}
    if final.returncode or last.returncode or noop != 8:
        failures.append(whole)
    print(whole, flush=True)

    # The config change: more trials; the redo of the search is killed and must be resumed, not wiped.
    cfg.write_text(yaml.safe_dump({**run, "search": {**run["search"], "trials": TRIALS_AFTER}}))
    proc = start(cfg, out, folder / "change")
    kill = interrupt_when(proc, out, "search", signal.SIGKILL, rf"(\d+) of {TRIALS_AFTER} trials completed", 1500)
    kill_time = time.time()
    import optuna

    journal = out / "search" / "study.journal"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = storage.get_all_studies()[0]
    survived = sum(t.state.name == "COMPLETE" for t in storage.get_all_trials(study._study_id))
    again = start(cfg, out, folder / "change_resume")
    again.wait()
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    trials = storage.get_all_trials(storage.get_all_studies()[0]._study_id)
    kept = sum(t.state.name == "COMPLETE" and t.datetime_complete.timestamp() < kill_time for t in trials)
    change = {**kill, "completed_in_storage_after_kill": survived, "kept_after_resume": kept,
              "completed_at_end": sum(t.state.name == "COMPLETE" for t in trials), "resume_rc": again.returncode,
              "resuming": "search (resuming) ..." in (folder / "change_resume").read_text()}
    if not change["resuming"] or kept < survived or change["completed_at_end"] != TRIALS_AFTER or again.returncode:
        failures.append(change)
    print(change, flush=True)

    after = facts()
    result = {"facts_before": before, "facts_after": after, "steps": steps, "whole": whole, "config_change": change,
              "failures": failures}
    from search_space.io import atomic_write_json, atomic_write_text

    stem = Path(args.out)
    atomic_write_json(stem.with_suffix(".json"), result)
    lines = [f"# hwnas run interrupted in every long stage, then resumed ({before['date']}, {before['machine']}, "
             f"load {before['load_average_1m']} -> {after['load_average_1m']})", "",
             "`PYTHONPATH=.:tests python experiments/bench_interrupt_resume.py` (tiny digits run of "
             "tests/test_pipeline.py, 4 epochs, one CPU table, 2000 trials; the moment of each signal found with "
             "`hwnas status`)", "",
             "| stage | signal | status when sent | exit | re-run resumed it | its exit | finished stages kept |",
             "| --- | --- | --- | ---: | --- | ---: | --- |"]
    lines += [f"| {s['stage']} | {s['signal']} | {s['detail']} | {s['rc']} | {'yes' if s['resuming'] else 'NO'} | "
              f"{s['resumed_rc']} | {len(s['finished_kept'])} of {len(s['finished_before'])} |" for s in steps]
    lines += ["", "Each re-run was stopped by SIGINT as the next stage started (exit 130), the last one ran to the end."]
    lines += ["", f"Completed by a further call (exit {whole['final_rc']}); a last re-run skipped "
              f"{whole['noop_stages_skipped']} of 8 stages as up to date (exit {whole['noop_rc']}).", "",
              f"Config change (search.trials 2000 -> {TRIALS_AFTER}), the redone search SIGKILLed at \"{change['detail']}\": "
              f"{change['completed_in_storage_after_kill']} completed trials in the journal after the kill (a buffered "
              f"journal loses at most 2 s), {change['kept_after_resume']} of them kept by the re-run (it said "
              f"'resuming': {change['resuming']}), {change['completed_at_end']} at the end. Issue 22 reported, "
              "before this fix, such a re-run wiping 6,600 finished trials and starting from 0 (not re-measured here).", "",
              f"Failures: {len(failures)}."]
    atomic_write_text(stem.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
