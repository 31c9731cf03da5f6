"""A Ray that a search starts for itself listens on the loopback interface only (no ``*:port``)."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")]

# Runs in a clean interpreter (no Ray already started by another test): start Ray the way a search
# does, make it start a worker, then list the listening TCP sockets of every process of that Ray.
PROBE = textwrap.dedent('''
    import glob, json, os, sys
    import ray
    from prunetune.search import cluster

    def listening():
        found = {}
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A":  # LISTEN
                        found[parts[9]] = parts[1]
        return found

    def ray_pids(session_dir):
        parents, pids = {}, set()
        for stat in glob.glob("/proc/[0-9]*/stat"):
            pid = int(stat.split("/")[2])
            try:
                parents.setdefault(int(open(stat).read().rsplit(")", 1)[1].split()[1]), []).append(pid)
                if session_dir in open(f"/proc/{pid}/cmdline").read():
                    pids.add(pid)
            except (OSError, IndexError, ValueError):
                continue
        todo = [os.getpid(), *pids]
        while todo:
            pid = todo.pop()
            pids.add(pid)
            todo += [c for c in parents.get(pid, []) if c not in pids]
        return pids

    assert cluster.connect(cluster.Cluster.of("local"))
    ray.get(ray.remote(lambda: os.getpid()).remote())
    session = ray._private.worker._global_node.get_session_dir_path()
    sockets, table = [], listening()
    for pid in ray_pids(session):
        try:
            name = open(f"/proc/{pid}/comm").read().strip()
            links = [os.readlink(fd) for fd in glob.glob(f"/proc/{pid}/fd/*")]
        except OSError:
            continue
        for link in links:
            inode = link[len("socket:["):-1] if link.startswith("socket:[") else None
            if inode in table:
                sockets.append([name, table[inode]])
    ray.shutdown()
    print("SOCKETS " + json.dumps(sockets))
''')


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as /proc/net/tcp{,6} writes it: hex words in host (little-endian) byte order."""
    host = hex_address.split(":")[0]
    raw = b"".join(bytes.fromhex(host[i:i + 8])[::-1] for i in range(0, len(host), 8))
    return ipaddress.ip_address(raw)


def _loopback(hex_address: str) -> bool:
    address = _address(hex_address)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def test_proc_addresses_decode() -> None:
    assert str(_address("0100007F:1F90")) == "127.0.0.1"
    assert _address("0000000000000000FFFF00000100007F:1F90").ipv4_mapped == ipaddress.IPv4Address("127.0.0.1")
    assert _loopback("0000000000000000FFFF00000100007F:1F90") and _loopback("00000000000000000000000001000000:0050")
    assert not _loopback("00000000:1F90") and not _loopback("00000000000000000000000000000000:1F90")


def test_a_local_ray_listens_on_loopback_only(tmp_path) -> None:
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("SOCKETS "))
    sockets = json.loads(line[len("SOCKETS "):])
    names = {name for name, _ in sockets}
    assert {"gcs_server", "raylet"} <= names, sockets  # the probe saw Ray's servers, not nothing
    exposed = [(name, str(_address(address))) for name, address in sockets if not _loopback(address)]
    assert not exposed, f"listening beyond loopback: {exposed}"
