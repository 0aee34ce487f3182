"""The seed's netlink step: a socket's 4-tuple from (pid, fd), for connections opened before attach.

/proc/<pid>/fd/<fd> names the socket inode; NETLINK_SOCK_DIAG lists TCP sockets
with their inodes and addresses. One dump answers many look-ups, so callers
batch them.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass

from pyroute2 import DiagSocket
from pyroute2.netlink.diag import SS_CONN

_SOCKET_LINK = re.compile(r"^socket:\[(\d+)\]$")


@dataclass(frozen=True, slots=True)
class SocketAddress:
    local_ip: str
    local_port: int
    remote_ip: str
    remote_port: int
    state: int


def socket_inode(pid: int, fd: int) -> int | None:
    """The socket inode behind a process's fd, or None (gone, not a socket)."""
    try:
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None
    m = _SOCKET_LINK.match(link)
    return int(m.group(1)) if m else None


def tcp_sockets_by_inode() -> dict[int, SocketAddress]:
    """Every connected TCP socket on the machine (IPv4 and IPv6), keyed by inode."""
    out: dict[int, SocketAddress] = {}
    with DiagSocket() as ds:
        ds.bind()
        for family in (socket.AF_INET, socket.AF_INET6):
            # The kernel filters by state: no fd names a TIME_WAIT socket, and after a run of
            # short connections there are thousands, whose parsing here once took long
            # enough (some 140 ms per 4,000) that connections closed before their look-up.
            for m in ds.get_sock_stats(family=family, states=SS_CONN):
                inode = m.get("idiag_inode")
                if inode:
                    out[inode] = SocketAddress(
                        m.get("idiag_src"),
                        m.get("idiag_sport"),
                        m.get("idiag_dst"),
                        m.get("idiag_dport"),
                        m.get("idiag_state"),
                    )
    return out


def lookup(pairs: list[tuple[int, int]]) -> dict[tuple[int, int], SocketAddress | None]:
    """Resolve many (pid, fd) at once; None for those that are gone or not TCP."""
    inodes = {p: socket_inode(*p) for p in pairs}
    table = tcp_sockets_by_inode() if any(inodes.values()) else {}
    return {p: (table.get(i) if i else None) for p, i in inodes.items()}
