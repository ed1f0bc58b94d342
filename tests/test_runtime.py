"""The runtime: an embedded Ray bound to loopback only, and joining an existing cluster."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from driver_output import last_json_object

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def _is_loopback(host: str) -> bool:
    addr = ipaddress.ip_address(host.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _ray_listening_sockets() -> list[tuple[str, int, str]]:
    """Listening sockets of Ray's processes started by this test session."""
    me = psutil.Process()
    ours = {p.pid for p in me.children(recursive=True)} | {me.pid}
    found = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in ours:
            try:
                found.append((conn.laddr.ip, conn.laddr.port, psutil.Process(conn.pid).name()))
            except psutil.NoSuchProcess:  # it exited after the listing (an engine of an earlier test)
                pass
    return found


def test_embedded_ray_listens_on_loopback_only(ray_session):
    assert ray_session.embedded
    assert ray_session.address.startswith("127.0.0.1:")
    assert ray_session.num_cpus >= 2 and ray_session.num_gpus == 0
    sockets = _ray_listening_sockets()
    names = {name for _, _, name in sockets}
    assert any("gcs_server" in n for n in names) and any("raylet" in n for n in names), sockets
    exposed = [s for s in sockets if not _is_loopback(s[0])]
    assert not exposed, f"Ray listens beyond loopback: {exposed}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_connects_to_an_existing_cluster_instead_of_starting_one():
    """`ray start --head` on 127.0.0.1 (1 CPU, unlike the embedded default), then init_ray(address)
    in a fresh process must join it: same GCS address, the cluster's CPU count."""
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    port = _free_port()
    head = subprocess.Popen(
        [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
         "--include-dashboard=false", "--disable-usage-stats", "--block"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        probe = (
            "import dataclasses, json; from synrank.runtime import init_ray; "
            f"print(json.dumps(dataclasses.asdict(init_ray(address='127.0.0.1:{port}'))))"
        )
        deadline = time.time() + 120
        while True:
            out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
            if out.returncode == 0 or time.time() > deadline:
                break
            time.sleep(2)  # the head may still be starting
        assert out.returncode == 0, out.stderr[-2000:]
        info = last_json_object(out.stdout)
        assert info["address"] == f"127.0.0.1:{port}"
        assert info["embedded"] is False
        assert info["num_cpus"] == 1.0 and info["num_nodes"] == 1
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(30)
