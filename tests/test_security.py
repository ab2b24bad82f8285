"""Security: what a search started by artune exposes on the network."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time

import psutil

from tests.test_search import REPO, SMOKE


def _listening_addresses(root: psutil.Process) -> dict[str, set[str]]:
    """The addresses each process under ``root`` listens on (TCP), by process name."""
    pids = {p.pid: p for p in root.children(recursive=True)}
    found: dict[str, set[str]] = {}
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in pids:
            try:
                name = pids[conn.pid].name()
            except psutil.NoSuchProcess:
                continue
            found.setdefault(name, set()).add(conn.laddr.ip)
    return found


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def test_a_local_search_listens_on_loopback_only(tmp_path, shakespeare_path):
    """Every socket of the Ray instance artune starts (GCS, raylet, agents, workers) is on loopback."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "artune.search",
            str(SMOKE),
            "--results-dir",
            str(tmp_path),
            "--name",
            "loopback",
            "--data",
            str(shakespeare_path),
            "--num-samples",
            "2",
            "--epochs",
            "2",
            "--set",
            "batches_per_epoch=40",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: dict[str, set[str]] = {}
    try:
        root = psutil.Process(process.pid)
        while process.poll() is None:  # sample the sockets for the whole search: trials' workers come and go
            for name, ips in _listening_addresses(root).items():
                seen.setdefault(name, set()).update(ips)
            time.sleep(0.5)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, stderr[-3000:]
    assert any("gcs_server" in name for name in seen), seen  # the sampling saw the Ray instance
    exposed = {name: ips for name, ips in seen.items() if not all(_is_loopback(ip) for ip in ips)}
    assert exposed == {}, f"listening beyond loopback: {exposed}"
