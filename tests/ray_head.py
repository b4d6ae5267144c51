"""A throwaway Ray cluster started with the ``ray`` CLI, as a user starts one: a head node
(``ray start --head``, with its dashboard and job server where jobs are submitted) and further
nodes (``ray start --address HEAD``), for tests and benchmarks.

Every port is a free one picked here and the session files go to a temporary folder of its own,
so the cluster runs beside other Ray clusters on the machine. :meth:`RayHead.stop` ends only the
processes this cluster started (each node's process group), never other clusters (``ray stop``
would). A node can be started with a folder hidden from it (a private mount namespace with an
empty tmpfs over the folder; root and ``unshare`` needed): a node of another machine, which does
not see the driver's files.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def job_deps_missing() -> str | None:
    """Why ``ray job submit`` cannot work here (Ray's dashboard and job server come with
    ``pip install "ray[default]"``), or None."""
    try:
        import aiohttp  # noqa: F401 - the dashboard's server
        import aiohttp_cors  # noqa: F401
        import opencensus  # noqa: F401
        import prometheus_client  # noqa: F401
        import ray.dashboard.modules.job.sdk  # noqa: F401 - the job client
    except ImportError as e:
        return f"Ray jobs need the dashboard: pip install \"ray[default]\" ({e.name or e} is missing)"
    return None


def hiding_unavailable() -> str | None:
    """Why a node cannot be started with a folder hidden from it here, or None."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "hiding a folder from a Ray node needs root and unshare (a private mount namespace)"
    probe = Path(tempfile.mkdtemp(prefix="hwray-ns-"))
    try:
        done = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs tmpfs {probe}"], capture_output=True,
                              text=True, timeout=30)
        return None if done.returncode == 0 else f"unshare -m with a tmpfs mount fails here: {done.stderr.strip()}"
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def _node_ports() -> list[str]:
    """Options giving a node's own servers free ports (no clash with other clusters' defaults)."""
    names = ("--object-manager-port", "--node-manager-port", "--metrics-export-port", "--runtime-env-agent-port",
             "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port")
    return [a for name, port in zip(names, _free_ports(len(names))) for a in (name, str(port))]


class RayHead:
    """A Ray head node on 127.0.0.1 with ``num_cpus`` CPUs and ``resources``; ``address`` is its
    GCS address (for ``ray.init`` and further nodes), ``dashboard`` its job server's URL (with
    ``dashboard``). Further nodes come from :meth:`add_node`."""

    def __init__(self, num_cpus: int = 2, resources: dict | None = None, object_store_mb: int = 80,
                 dashboard: bool = True):
        self.num_cpus, self.resources, self.object_store_mb = num_cpus, resources or {}, object_store_mb
        self.with_dashboard = dashboard
        self.port, self.dashboard_port, self.client_port = _free_ports(3)
        # a short path: Ray's Unix sockets live under it (108 characters at most)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="hwray-"))
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.procs: list[subprocess.Popen] = []

    def env(self) -> dict:
        """The environment for the ``ray`` CLI and Ray jobs against this cluster."""
        env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
               "RAY_ADDRESS": self.dashboard, "RAY_USAGE_STATS_ENABLED": "0"}
        env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])  # ray, hwnas
        return env

    def _start(self, args: list[str], name: str, wrap: list[str] = ()) -> subprocess.Popen:
        ray = shutil.which("ray", path=str(BIN)) or "ray"
        cmd = [*wrap, ray, "start", "--block", "--node-ip-address", "127.0.0.1", *args, *_node_ports(),
               "--object-store-memory", str(self.object_store_mb * 2**20), "--disable-usage-stats"]
        env = {k: v for k, v in self.env().items() if k != "RAY_ADDRESS"}
        with open(self.temp_dir / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def start(self, timeout_s: float = 120) -> "RayHead":
        """Start the head (in a process group of its own); wait until it answers (its job server
        too, with ``dashboard``)."""
        proc = self._start(["--head", "--port", str(self.port), "--ray-client-server-port", str(self.client_port),
                            "--include-dashboard", "true" if self.with_dashboard else "false",
                            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                            "--num-cpus", str(self.num_cpus), "--resources", json.dumps(self.resources),
                            "--temp-dir", str(self.temp_dir)], "head")
        self._wait(proc, "head", self._head_up, timeout_s)
        return self

    def _head_up(self) -> bool:
        if self.with_dashboard:
            try:
                with urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False
        return "Ray runtime started" in self.log("head")

    def add_node(self, num_cpus: int, resources: dict | None = None, hide: Path | None = None,
                 timeout_s: float = 120) -> subprocess.Popen:
        """Start a node joining the head; with ``hide``, that folder is empty for the node and its
        workers (as on another machine), and stays as it is for everyone else."""
        name = f"node{len(self.procs)}"
        wrap = []
        if hide is not None:  # the node's own mount namespace: tmpfs over the folder, then `ray start`
            wrap = ["unshare", "-m", "sh", "-c", f'mount -t tmpfs tmpfs "$0" && exec "$@"', str(hide)]
        proc = self._start(["--address", self.address, "--num-cpus", str(num_cpus),
                            "--resources", json.dumps(resources or {}), "--temp-dir", str(self.temp_dir)], name, wrap)
        self._wait(proc, name, lambda: "Ray runtime started" in self.log(name), timeout_s)
        return proc

    def _wait(self, proc: subprocess.Popen, name: str, ready, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"ray start ({name}) exited {proc.returncode}: {self.log(name)[-2000:]}")
            if ready():
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Ray {name} did not start in {timeout_s:g} s: {self.log(name)[-2000:]}")

    def log(self, name: str = "head") -> str:
        """What ``ray start`` printed for node ``name`` (head, node1, ...)."""
        path = self.temp_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_jobs(self) -> None:
        """Stop the jobs still running (their drivers are not in the nodes' process groups)."""
        if not self.with_dashboard or job_deps_missing() is not None:
            return
        from ray.job_submission import JobSubmissionClient

        try:
            client = JobSubmissionClient(self.dashboard)
            running = [j.submission_id for j in client.list_jobs() if not j.status.is_terminal()]
            for job_id in running:
                client.stop_job(job_id)
            deadline = time.monotonic() + 30
            while running and time.monotonic() < deadline:
                running = [j for j in running if not client.get_job_status(j).is_terminal()]
                time.sleep(0.5)
        except Exception:  # noqa: BLE001 - best effort: the head is stopped next anyway
            pass

    def stop(self) -> None:
        """End every node's processes (worker nodes first), then remove the session files."""
        self.stop_jobs()
        for proc in reversed(self.procs):
            for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            try:  # children that outlived `ray start --block` (same process group)
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.procs = []
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "RayHead":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
