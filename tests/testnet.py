"""Separate hosts on one machine for the multi-instance tests: network namespaces on a bridge.

:func:`host_network` makes a Linux bridge with an address in 10.213.N.0/24 (the test
process's side: PostgreSQL, the Scribe emulator, the webhook receiver and the load
balancer listen there) and ``hosts`` network namespaces, each joined to the bridge by a
veth pair and given 10.213.N.(11+i). A process started with :meth:`NetHost.command` sees
only its own interfaces: nothing it does can rely on a shared loopback.

Names carry a random tag, so parallel runs never collide; each run records its owner's
pid under ``/run/callbridge-testnet``, and a later run removes what a crashed one left
(its processes, namespaces and bridge). Needs root and iproute2.

PostgreSQL must accept connections from 10.213.0.0/16: ``.ci/postgres-test-subnet.sh``
configures the local server (``.ci/run`` runs it).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

SUBNET = ipaddress.ip_network("10.213.0.0/16")
STATE_DIR = Path("/run/callbridge-testnet")
REQUIRE_ENV = "CALLBRIDGE_TEST_REQUIRE_NETNS"  # set by .ci/run: unavailable is a failure
_NETNS_PREFIX = "callbridge-test-"


class NetnsUnavailable(Exception):
    """This machine cannot make network namespaces (not root, no iproute2, …)."""


@dataclass(frozen=True)
class NetHost:
    """One network namespace: a separate host with its own address and loopback."""

    netns: str
    ip: str

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def pids(self) -> list[int]:
        out = subprocess.run(
            ["ip", "netns", "pids", self.netns], capture_output=True, text=True, check=False
        ).stdout
        return [int(pid) for pid in out.split()]


@dataclass(frozen=True)
class HostNetwork:
    tag: str
    bridge: str
    host_ip: str  # the test process's address on the bridge
    hosts: tuple[NetHost, ...]


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NetnsUnavailable(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces(tag: str) -> list[str]:
    listed = _ip("netns", "list", check=False).stdout
    names = [line.split()[0] for line in listed.splitlines() if line.strip()]
    return [name for name in names if name.startswith(f"{_NETNS_PREFIX}{tag}-")]


def _remove(tag: str) -> None:
    """Everything a run with ``tag`` made: its processes, namespaces, bridge, state file."""
    for netns in _namespaces(tag):
        host = NetHost(netns, "")
        for pid in host.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while host.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        _ip("netns", "del", netns, check=False)  # takes its end of the veth pair with it
    _ip("link", "del", f"cbt{tag}b", check=False)
    (STATE_DIR / tag).unlink(missing_ok=True)


def _sweep_leftovers() -> None:
    """Remove what runs whose process is gone left behind (a crash, a SIGKILL)."""
    for state in STATE_DIR.glob("[0-9a-f]" * 6):
        try:
            owner = int(state.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            owner = 0
        if not _pid_alive(owner):
            _remove(state.name)


def _free_subnet() -> ipaddress.IPv4Network:
    used = set(re.findall(r"inet (10\.213\.\d+)\.", _ip("-o", "-4", "addr", "show").stdout))
    choices = [n for n in range(1, 255) if f"10.213.{n}" not in used]
    if not choices:
        raise NetnsUnavailable("no free /24 left in 10.213.0.0/16")
    return ipaddress.ip_network(f"10.213.{random.choice(choices)}.0/24")


def check_available() -> None:
    if os.geteuid() != 0:
        raise NetnsUnavailable("network namespaces need root")
    if shutil.which("ip") is None:
        raise NetnsUnavailable("iproute2's `ip` is not installed")


def skip_or_fail(reason: str) -> None:
    """Skip where the machine cannot do it; fail in CI, which must (``REQUIRE_ENV``)."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{reason} (and {REQUIRE_ENV}=1)")
    pytest.skip(reason)


@contextlib.contextmanager
def host_network(hosts: int) -> Iterator[HostNetwork]:
    """A bridge and ``hosts`` namespaces on it, removed afterwards whatever happens."""
    check_available()
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    tag = os.urandom(3).hex()
    with open(STATE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # subnet choice and creation, one run at a time
        _sweep_leftovers()
        subnet = _free_subnet()
        (STATE_DIR / tag).write_text(f"{os.getpid()} {subnet}\n")
        addresses = list(subnet.hosts())
        host_ip = str(addresses[0])
        bridge = f"cbt{tag}b"
        try:
            _ip("link", "add", bridge, "type", "bridge")
            _ip("addr", "add", f"{host_ip}/24", "dev", bridge)
            _ip("link", "set", bridge, "up")
            made = []
            for index in range(hosts):
                netns = f"{_NETNS_PREFIX}{tag}-{index}"
                outside, inside = f"cbt{tag}h{index}", f"cbt{tag}n{index}"
                ip = str(addresses[10 + index])
                _ip("netns", "add", netns)
                _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
                _ip("link", "set", inside, "netns", netns)
                _ip("link", "set", outside, "master", bridge, "up")
                _ip("-n", netns, "addr", "add", f"{ip}/24", "dev", inside)
                _ip("-n", netns, "link", "set", inside, "up")
                _ip("-n", netns, "link", "set", "lo", "up")
                made.append(NetHost(netns, ip))
        except BaseException:
            _remove(tag)
            raise
    try:
        yield HostNetwork(tag, bridge, host_ip, tuple(made))
    finally:
        _remove(tag)


def reachable(host: str, port: int, timeout_s: float = 2.0) -> bool:
    """Whether a TCP connection to ``host:port`` succeeds from this namespace."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False
