"""Two Ray nodes on one machine, started and stopped by pid (never `ray stop`: other clusters run here).

The worker node gets a fresh ``HOME`` (no artifacts, no token) and finds the head's token
through ``RAY_AUTH_TOKEN_PATH``, as a new machine joining the cluster would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from modelweave.ports import free_port
from modelweave.serving import SERVE_ENV

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


class TwoNodeCluster:
    """Head + one worker raylet on 127.0.0.1, every port chosen free, all state under ``root``."""

    def __init__(self, root: Path, cpus: int = 4) -> None:
        self.root = root
        # Short: Ray's unix socket paths live below it and must stay under ~107 bytes.
        self.temp_dir = Path(f"/tmp/mwmn-{os.getpid()}-{int(time.time()) % 100000}")
        self.head_home = root / "head-home"
        self.worker_home = root / "worker-home"
        self.cpus = cpus
        self.port = free_port()
        self.dashboard_port = free_port()
        self.worker_manager_port = free_port()
        self.data_dir = Path(os.environ.get("MODELWEAVE_DATA_DIR") or Path.home() / ".cache" / "modelweave")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self, home: Path | None = None, data_dir: bool = True, token: bool = True) -> dict[str, str]:
        """Environment for anything talking to this cluster (token auth on, like production)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MODELWEAVE_"))}
        env.update(SERVE_ENV)  # as cluster/README's `ray start` lines
        env.update(HOME=str(home or self.head_home), RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0",
                   PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), str(REPO)]))
        if token:  # the head writes the token into its HOME; everyone else is pointed at it
            env["RAY_AUTH_TOKEN_PATH"] = str(self.head_home / ".ray" / "auth_token")
        if data_dir:
            env["MODELWEAVE_DATA_DIR"] = str(self.data_dir)
        return env

    def _start(self, args: list[str], env: dict[str, str], node_manager_port: int) -> None:
        ports = ["--node-manager-port", str(node_manager_port), "--object-manager-port", str(free_port()),
                 "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
                 "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port())]
        r = subprocess.run([RAY, "start", *args, *ports, "--num-cpus", str(self.cpus),
                            "--node-ip-address", "127.0.0.1", "--disable-usage-stats"],
                           env=env, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"ray start failed: {r.stdout}\n{r.stderr}")

    def start(self) -> None:
        """Starts the head (with dashboard, for the state API) and the worker."""
        for home in (self.head_home, self.worker_home):
            home.mkdir(parents=True, exist_ok=True)
        # With RAY_AUTH_MODE=token set, `ray start --head` expects a token instead of making one.
        r = subprocess.run([RAY, "get-auth-token", "--generate"], env=self.env(token=False), capture_output=True,
                           text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"ray get-auth-token failed: {r.stderr}")
        self._start(["--head", "--port", str(self.port), "--temp-dir", str(self.temp_dir),
                     "--dashboard-port", str(self.dashboard_port), "--ray-client-server-port", str(free_port())],
                     self.env(token=False), free_port())
        self._start(["--address", self.address], self.env(self.worker_home, data_dir=False),
                    self.worker_manager_port)

    def ray_list(self, what: str, *filters: str) -> list[dict[str, object]]:
        """``ray list WHAT`` through the state API, as JSON."""
        args = [RAY, "list", what, "--address", f"http://127.0.0.1:{self.dashboard_port}", "--format", "json",
                "--limit", "10000", "--detail"]
        for f in filters:
            args += ["--filter", f]
        r = subprocess.run(args, env=self.env(), capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"ray list {what} failed: {r.stderr[-2000:]}")
        return list(json.loads(r.stdout))

    def node_ids(self) -> tuple[str, str]:
        """(head node id, worker node id)."""
        nodes = self.ray_list("nodes")
        head = next(str(n["node_id"]) for n in nodes if n.get("is_head_node"))
        worker = next(str(n["node_id"]) for n in nodes if not n.get("is_head_node"))
        return head, worker

    def _ours(self) -> list[psutil.Process]:
        """Every live process of this cluster: those naming our temp dir, and their descendants."""
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if str(self.temp_dir) in " ".join(proc.info["cmdline"] or []):
                    found[proc.pid] = proc
                    for child in proc.children(recursive=True):
                        found[child.pid] = child
            except psutil.Error:
                continue
        found.pop(os.getpid(), None)
        return list(found.values())

    def worker_raylet(self) -> psutil.Process:
        """The worker node's raylet (found by its node manager port)."""
        for proc in self._ours():
            try:
                cmd = " ".join(proc.cmdline())
            except psutil.Error:
                continue
            if proc.name() == "raylet" and f"--node_manager_port={self.worker_manager_port}" in cmd:
                return proc
        raise RuntimeError("worker raylet not found")

    def stop(self) -> None:
        """SIGKILLs every process of this cluster (GCS, raylets, agents, workers), by pid."""
        for _ in range(3):  # agents can re-parent to 1 while their parents die: sweep again
            procs = self._ours()
            for proc in procs:
                try:
                    proc.send_signal(signal.SIGKILL)
                except psutil.Error:
                    pass
            psutil.wait_procs(procs, timeout=10)
            if not procs:
                break
        shutil.rmtree(self.temp_dir, ignore_errors=True)
