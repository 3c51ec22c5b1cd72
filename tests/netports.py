"""Loopback ports for the servers the tests start (Ray heads and nodes, an MLflow server).

``bind(("127.0.0.1", 0))`` gets a port from the kernel's ephemeral range, the range the kernel
hands out again for every outgoing connection and every other ``bind(0)``, Ray's own agents and
gRPC servers included. A port chosen that way and closed can be taken before the server binds
it: the head's client server then fails with "Address already in use" and ``ray start`` ends
the whole head. These come from between Ray's default worker ports (10002-19999) and the
ephemeral range, each checked free and never handed out twice in one process.

    gcs, dashboard = free_ports(2)
    workers = free_block(61)    # --min-worker-port=workers[0] --max-worker-port=workers[-1]
"""

from __future__ import annotations

import random
import socket

LOW = 20000
"""Above Ray's default worker-port range."""

_given: set[int] = set()
_rng = random.Random()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            low = int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return low if low > LOW + 1000 else 32768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_block(n: int) -> list[int]:
    """``n`` consecutive free ports, none handed out before."""
    high = _ephemeral_low()
    for _ in range(1000):
        base = _rng.randrange(LOW, high - n)
        block = list(range(base, base + n))
        if not _given.intersection(block) and all(_bindable(p) for p in block):
            _given.update(block)
            return block
    raise RuntimeError(f"no {n} consecutive free loopback ports between {LOW} and {high}")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports, none handed out before."""
    return [free_block(1)[0] for _ in range(n)]


def free_port() -> int:
    return free_block(1)[0]
