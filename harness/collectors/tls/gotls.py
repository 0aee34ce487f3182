"""Go crypto/tls in a binary: where (*Conn).Write and (*Conn).Read start and return, and
the offsets from a *tls.Conn to its socket's addresses. Entries and RET instructions come
from Go's function table (.gopclntab, which stripping keeps) and a disassembly; layouts
from the DWARF when there is one, else from the generated offsets table's Go part, as the
grpc-go probes are resolved (harness/collectors/gobin/offsets.py). No uretprobes on Go:
stacks move."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from harness.collectors.gobin import offsets
from harness.collectors.gobin.cache import cache_dir, cached, file_sha256
from harness.collectors.gobin.elfgo import GoBinary, NotGoBinary, read_go_binary
from harness.collectors.gobin.pclntab import (
    NoDisassembly,
    NoPclntab,
    disassemble,
    probe_pc,
    read_pclntab,
    ret_addresses,
)
from harness.collectors.gobin.spills import spilled_args

RESOLVER_VERSION = 4  # 4: the spill check follows control flow

WRITE = "crypto/tls.(*Conn).Write"
READ = "crypto/tls.(*Conn).Read"
CONN = "crypto/tls.Conn"
# Standard-library structs these probes read: the offsets table keeps them in its ``go``
# part beside grpc-go's (collector.py declares them), so stripped binaries' TLS is probed too
TLS_STRUCTS = (
    "crypto/tls.Conn", "net.TCPConn", "net.conn", "net.netFD", "internal/poll.FD",
    "net.TCPAddr",
)  # fmt: skip


@dataclass
class GoTls:
    path: str
    go_version: str | None = None
    write: int = 0  # entry addresses (virtual)
    read: int = 0
    read_rets: list[int] = field(default_factory=list)  # RET instructions of Read
    # Read keeps its receiver and buffer (c, b.ptr, b.len) in their spill slots to the end:
    # its RETs alone see each call whole, even one begun before the attach (no entry probe)
    read_args_spilled: bool = False
    defines: dict[str, int] = field(default_factory=dict)
    source: str = "none"  # where the layouts came from: "dwarf" | "table" | "none"
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        gb = read_go_binary(path, symbol_names=(), struct_names=TLS_STRUCTS,
                            type_names=(), function_names=(WRITE, READ))  # fmt: skip
    except NotGoBinary as e:
        r.error = str(e)
        return r
    r.go_version = gb.go_version
    try:
        with path.open("rb") as f:
            elf = ELFFile(f)
            pt = read_pclntab(elf, {WRITE, READ})
            fw, fr = pt.functions.get(WRITE), pt.functions.get(READ)
            if fw is None or fr is None:
                r.error = "crypto/tls is not linked in"
                return r
            if CONN in gb.structs and WRITE in gb.functions and READ in gb.functions:
                r.source = "dwarf"
                # DWARF's prologue_end: past the stack-growth check, where a morestack
                # detour re-enters (an entry probe would see one Write twice)
                r.write, r.read = gb.functions[WRITE].probe_pc, gb.functions[READ].probe_pc
            else:
                gov, why = offsets.pick(offsets.load_table(), "go",
                                        offsets.go_minor(gb.go_version), "Go")  # fmt: skip
                if gov is None or CONN not in gov.get("structs", {}):
                    r.error = (f"stripped, and the offsets table has no crypto/tls layout "
                               f"for {gb.go_version} ({why or 'no crypto/tls.Conn'})")  # fmt: skip
                    return r
                gb = offsets.synthesize(path, elf, pt, {"go": gov}, gb.go_version,
                                        gb.modules, ())  # fmt: skip
                pw, pr = probe_pc(elf, fw), probe_pc(elf, fr)
                if pw is None or pr is None:
                    r.error = "stripped, and a crypto/tls prologue is not one we know"
                    return r
                r.source, r.write, r.read = "table", pw, pr
            listing = disassemble(path, fr)
            r.read_rets = ret_addresses(path, fr, listing)
            r.read_args_spilled = spilled_args(listing, 3)
    except (NoPclntab, NoDisassembly) as e:
        r.error = str(e)
        return r
    except (ELFError, OSError) as e:
        r.error = f"cannot read it ({e})"
        return r
    if not r.read_rets:
        r.error = f"no RET found in {READ}"
        return r
    try:
        r.defines = _defines(gb) | {"PB_GO_READ_SPILLED": int(r.read_args_spilled)}
    except KeyError as e:
        r.error = f"no layout for {e} in the {r.source}"
    return r


def _defines(gb: GoBinary) -> dict[str, int]:
    def off(struct: str, *members: str) -> int:
        total, cur = 0, struct
        for m in members:
            mem = gb.structs[cur].members[m]
            total, cur = total + mem.offset, mem.type_name
        return total

    return {
        "PB_TLSCONN_CONN": off(CONN, "conn"),
        "PB_TCPCONN_FD": off("net.TCPConn", "conn", "fd"),
        "PB_NETFD_SYSFD": off("net.netFD", "pfd", "Sysfd"),
        "PB_NETFD_LADDR": off("net.netFD", "laddr"),
        "PB_NETFD_RADDR": off("net.netFD", "raddr"),
        "PB_TCPADDR_IP": off("net.TCPAddr", "IP"),
        "PB_TCPADDR_PORT": off("net.TCPAddr", "Port"),
    }
