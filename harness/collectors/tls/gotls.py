"""Go crypto/tls in a binary: where (*Conn).Write and (*Conn).Read start and return, and
the offsets from a *tls.Conn to its socket's addresses, read from the symbol table, the
DWARF (as the grpc-go probes are resolved: harness/collectors/gobin/elfgo.py) and the
RET instructions Go's own disassembler lists. No uretprobes on Go: stacks move."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.collectors.gobin.cache import cache_dir, cached, file_sha256
from harness.collectors.gobin.elfgo import NotGoBinary, read_go_binary

RESOLVER_VERSION = 1

WRITE = "crypto/tls.(*Conn).Write"
READ = "crypto/tls.(*Conn).Read"
CONN = "crypto/tls.Conn"
_RET = re.compile(r"^\s+\S+:\d+\s+0x([0-9a-f]+)\s+\S+\s+RET\b", re.M)


@dataclass
class GoTls:
    path: str
    go_version: str | None = None
    write: int = 0  # entry addresses (virtual)
    read: int = 0
    read_rets: list[int] = field(default_factory=list)  # RET instructions of Read
    defines: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def go_tool() -> str | None:
    return shutil.which("go") or next(
        (p for p in ("/usr/local/go/bin/go",) if Path(p).exists()), None
    )


def ret_addresses(path: Path, symbol: str) -> list[int]:
    """The RET instructions of one function, from `go tool objdump`."""
    go = go_tool()
    if go is None:
        raise RuntimeError("the go tool is needed to find RET instructions (go tool objdump)")
    pattern = "^" + re.escape(symbol) + "$"
    out = subprocess.run([go, "tool", "objdump", "-s", pattern, str(path)],
                         capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"go tool objdump failed: {out.stderr.strip()[-200:]}")
    return [int(a, 16) for a in _RET.findall(out.stdout)]


def resolve_go_tls(path: Path, *, use_cache: bool = True) -> GoTls:
    """Resolve one binary, cached by content hash (a large binary's DWARF takes seconds
    to read, tens of seconds on a loaded machine); never raises for a bad binary."""
    try:
        digest = file_sha256(path)
    except OSError as e:
        return GoTls(str(path), error=f"cannot read {path}: {e.strerror}")
    entry = cache_dir("tls") / f"{digest[:32]}-v{RESOLVER_VERSION}.json"
    r = cached(entry, lambda: _resolve(path), GoTls.to_dict, lambda d: GoTls(**d),
               use_cache=use_cache)  # fmt: skip
    r.path = str(path)
    return r


def _resolve(path: Path) -> GoTls:
    r = GoTls(str(path))
    try:
        gb = read_go_binary(
            path, symbol_names=(WRITE, READ),
            struct_names=(CONN, "net.TCPConn", "net.conn", "net.netFD", "internal/poll.FD",
                          "net.TCPAddr"),
            type_names=(), function_names=(WRITE, READ),
        )  # fmt: skip
    except NotGoBinary as e:
        r.error = str(e)
        return r
    r.go_version = gb.go_version
    if WRITE not in gb.symbols or READ not in gb.symbols:
        r.error = "crypto/tls is not linked in"
        return r
    try:
        def off(struct: str, *members: str) -> int:
            total, cur = 0, struct
            for m in members:
                mem = gb.structs[cur].members[m]
                total, cur = total + mem.offset, mem.type_name
            return total

        r.defines = {
            "PB_TLSCONN_CONN": off(CONN, "conn"),
            "PB_TCPCONN_FD": off("net.TCPConn", "conn", "fd"),
            "PB_NETFD_SYSFD": off("net.netFD", "pfd", "Sysfd"),
            "PB_NETFD_LADDR": off("net.netFD", "laddr"),
            "PB_NETFD_RADDR": off("net.netFD", "raddr"),
            "PB_TCPADDR_IP": off("net.TCPAddr", "IP"),
            "PB_TCPADDR_PORT": off("net.TCPAddr", "Port"),
        }
    except KeyError as e:
        r.error = f"no DWARF for {e} (stripped, or another Go layout)"
        return r
    # past the stack-growth check: a morestack detour re-enters at the symbol, and an entry
    # probe there would see one Write twice (the registers still hold the arguments here)
    fw, fr = gb.functions.get(WRITE), gb.functions.get(READ)
    if fw is None or fr is None:
        r.error = "no DWARF subprogram for crypto/tls.(*Conn).Write/Read"
        return r
    r.write, r.read = fw.probe_pc, fr.probe_pc
    try:
        r.read_rets = ret_addresses(path, READ)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        r.error = str(e)
        return r
    if not r.read_rets:
        r.error = f"no RET found in {READ}"
    return r
