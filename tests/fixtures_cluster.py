"""Several Ray nodes on this one machine, on loopback: what stands in for a cluster in the tests.

Each node is its own `ray start ... --block` process group (raylet, its workers, the head's GCS
and dashboard), so a node is removed the way a machine dies: SIGKILL to everything it runs.

    with LocalCluster(head_cpus=1) as cluster:
        worker = cluster.add_node(num_cpus=1)
        run_driver(cluster, ["generate", ...])      # a `synrank` driver joining the cluster
        cluster.remove_node(worker)                   # node loss
        cluster.add_node(num_cpus=1)                  # what an autoscaler would bring back

Ray refuses a second node unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1; every node then gets
`--node-ip-address=127.0.0.1`, and the dashboard, agents and client server are bound to loopback
or to free ports of their own (the test session's embedded Ray already holds the defaults). GCS
and raylets still listen on all interfaces in this mode (see the README's cluster section).
Health checks are tightened so a killed node is declared dead in seconds, not the default ~30 s.
"""

from __future__ import annotations

import contextlib
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# GCS declares a node dead after threshold x period without an answer.
FAST_HEALTH_CHECKS = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "4",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cluster_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="1", RAY_AUTH_MODE="disabled",
               RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1", VLLM_HOST_IP="127.0.0.1", **FAST_HEALTH_CHECKS)
    env.pop("RAY_ADDRESS", None)
    # The job's and the workers' `python` is this environment's.
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env.update(extra or {})
    return env


def _agent_ports() -> list[str]:
    return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]


@dataclass
class Node:
    name: str
    proc: subprocess.Popen
    num_cpus: float
    resources: dict[str, float] = field(default_factory=dict)
    log: Path | None = None

    def family(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """SIGKILL the node's whole process tree, as a machine that dies."""
        family = self.family()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for p in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)


class LocalCluster:
    """A head node plus worker nodes, each a `ray start --block` process on 127.0.0.1."""

    def __init__(self, head_cpus: float = 1, head_resources: dict[str, float] | None = None,
                 env: dict[str, str] | None = None, dashboard: bool = True, defer_head: bool = False) -> None:
        self.env = cluster_env(env)
        self.temp = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))  # short: Unix socket paths <= 107 bytes
        self.port = free_port()
        self.dashboard_port = free_port()
        # Ray's own helpers that call ray.init() inside the cluster (Train's placement-group
        # cleaner, for one) would otherwise find every Ray on this machine and refuse to choose.
        self.env["RAY_ADDRESS"] = self.address
        self.dashboard = dashboard
        self.nodes: list[Node] = []
        self._counter = 0
        self._head_cpus, self._head_resources = head_cpus, head_resources or {}
        if not defer_head:
            self.start_head()

    def start_head(self, extra_args: list[str] = ()) -> None:
        """The head node (`defer_head=True` leaves it to the caller, e.g. to add an autoscaler)."""
        self.head = self._start_node(self._head_cpus, self._head_resources, head=True, extra_args=list(extra_args))

    # -- addresses ---------------------------------------------------------------------------
    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def driver_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a driver process that joins this cluster."""
        return {**self.env, **(extra or {})}

    # -- nodes -------------------------------------------------------------------------------
    def _start_node(self, num_cpus: float, resources: dict[str, float], head: bool = False,
                    extra_args: list[str] = ()) -> Node:
        self._counter += 1
        name = "head" if head else f"worker{self._counter - 1}"
        # A temp dir per node, as each machine of a real cluster has its own /tmp/ray. Nodes sharing
        # one would share its runtime_resources: a second node's runtime-env agent then unpacks a
        # job's working dir again over the directory the job's driver runs in, which deletes the
        # driver's cwd under it (a driver that first imported torch after that died in oneMKL:
        # "Cannot load libtorch_cpu.so"), and every node's log monitor forwards every worker's
        # lines, so the driver sees them twice.
        temp = self.temp if head else self.temp / name
        temp.mkdir(exist_ok=True)
        args = [str(BIN / "ray"), "start", "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus:g}",
                "--num-gpus=0", "--object-store-memory=500000000", f"--temp-dir={temp}", "--disable-usage-stats", "--block", *_agent_ports(),
                f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}"]
        if resources:
            args.append(f"--resources={json.dumps(resources)}")
        if head:
            args += ["--head", f"--port={self.port}", f"--ray-client-server-port={free_port()}"]
            if self.dashboard:
                args += ["--include-dashboard=true", "--dashboard-host=127.0.0.1",
                         f"--dashboard-port={self.dashboard_port}"]
            else:
                args.append("--include-dashboard=false")
        else:
            args.append(f"--address={self.address}")
        args += list(extra_args)
        log_path = self.temp / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        node = Node(name, proc, num_cpus, dict(resources), log_path)
        self.nodes.append(node)
        self.wait_for_nodes(len(self.alive()))
        return node

    def add_node(self, num_cpus: float = 1, resources: dict[str, float] | None = None) -> Node:
        return self._start_node(num_cpus, resources or {})

    def alive(self) -> list[Node]:
        return [n for n in self.nodes if n.proc.poll() is None]

    def remove_node(self, node: Node, wait_dead: bool = True) -> None:
        node.kill()
        if wait_dead:
            self.wait_for_nodes(len(self.alive()))

    # -- state -------------------------------------------------------------------------------
    def node_states(self) -> list[dict]:
        """The nodes the GCS knows, from the dashboard's state API."""
        with urllib.request.urlopen(f"{self.dashboard_url}/api/v0/nodes?limit=100", timeout=10) as resp:
            body = json.loads(resp.read())
        return body["data"]["result"]["result"]

    def alive_count(self) -> int:
        return sum(1 for n in self.node_states() if n.get("state") == "ALIVE")

    def wait_for_nodes(self, count: int, timeout: float = 180) -> None:
        """Until the GCS sees exactly `count` alive nodes."""
        deadline = time.time() + timeout
        last: Exception | str = ""
        while time.time() < deadline:
            dead = [n for n in self.nodes if n.proc.poll() is not None and n.proc.returncode not in (-9, None)]
            if dead and dead[0] is self.head:
                raise RuntimeError(f"the head node exited: {self.head.log.read_text()[-3000:]}")
            try:
                seen = self.alive_count()
                if seen == count:
                    return
                last = f"{seen} alive"
            except Exception as exc:  # the dashboard is still starting
                last = exc
            time.sleep(1)
        raise TimeoutError(f"the cluster did not reach {count} alive node(s) in {timeout:.0f} s: {last}")

    # -- lifetime ----------------------------------------------------------------------------
    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.kill()
        # Nodes this cluster's autoscaler launched are not in any node's process tree; they run
        # with this cluster's session directory on their command line.
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if any(str(self.temp) in part for part in proc.info["cmdline"] or ()):
                    proc.kill()
        shutil.rmtree(self.temp, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def run_synrank(cluster: LocalCluster, args: list[str], *, env: dict[str, str] | None = None,
                timeout: float = 1200, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """A `synrank` driver process that joins `cluster` (RAY_ADDRESS)."""
    return subprocess.run([sys.executable, "-m", "synrank", *args], env=cluster.driver_env(env), cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout)


def start_synrank(cluster: LocalCluster, args: list[str], log: Path, *, env: dict[str, str] | None = None,
                  cwd: Path | None = None) -> subprocess.Popen:
    """The same, in the background; stdout and stderr go to `log`."""
    with open(log, "wb") as handle:
        return subprocess.Popen([sys.executable, "-m", "synrank", *args], env=cluster.driver_env(env),
                                cwd=cwd or REPO, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def stop_process(proc: subprocess.Popen, timeout: float = 60) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


@pytest.fixture
def local_cluster() -> Iterator[type[LocalCluster]]:
    """A factory: `cluster = local_cluster(head_cpus=1)`; every cluster made is stopped afterwards."""
    made: list[LocalCluster] = []

    def make(**kwargs) -> LocalCluster:
        cluster = LocalCluster(**kwargs)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()
