"""Find the grpc-go processes to probe: those using the observed TCP ports.

(Processes a command starts are met at exec instead, by the exec gate: gate.py.)
Reads /proc only (no BPF). A process is a target when its executable is a Go
binary (a .go.buildinfo section, or a runtime.buildVersion symbol) that links
grpc-go (the google.golang.org/grpc module in its build info, or grpc-go's
transport functions in its symbol table or, stripped, in Go's function table).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from harness.collectors.gobin.elfgo import NotGoBinary, in_memory, quick_info
from harness.collectors.uprobe.resolve import GRPC_MODULE, TRANSPORT

PROC = Path("/proc")
_TCP_LISTEN, _TCP_ESTABLISHED = "0A", "01"


@dataclass(frozen=True)
class GoIdentity:
    go: bool
    go_version: str | None = None
    grpc_version: str | None = None  # "linked" when only symbols say so
    why: str = ""


@dataclass
class Target:
    pid: int
    exe: str
    go_version: str | None
    grpc_version: str
    ports: list[int] = field(default_factory=list)  # requested ports this process uses


def identify(exe: Path) -> GoIdentity:
    """Is this a Go binary, and does it link grpc-go?"""
    try:
        version, mods = quick_info(exe)
    except NotGoBinary as e:
        if "no .go.buildinfo" not in str(e):
            return GoIdentity(False, why=str(e))
        version, mods = None, {}
    except OSError as e:
        return GoIdentity(False, why=f"cannot read {exe}: {e.strerror}")
    has_runtime = version is not None
    grpc_sym = False
    stripped_blind = False  # no symbol table and no function table: cannot tell
    try:
        with exe.open("rb") as f:
            elf = ELFFile(in_memory(f))  # one read, not one a symbol (the gate is holding)
            symtab = elf.get_section_by_name(".symtab")
            for s in symtab.iter_symbols() if symtab is not None else ():
                if s.name == "runtime.buildVersion":
                    has_runtime = True
                elif s.name.startswith(f"{TRANSPORT}.("):
                    grpc_sym = True
                if has_runtime and grpc_sym:
                    break
            if symtab is None and has_runtime and GRPC_MODULE not in mods:
                # stripped: function names survive in .gopclntab (a GOPATH or vendored
                # build lists no modules in its build info)
                pcln = elf.get_section_by_name(".gopclntab")
                if pcln is None:
                    stripped_blind = True
                else:
                    grpc_sym = f"{TRANSPORT}.(".encode() in pcln.data()
    except (ELFError, OSError):
        pass
    if not has_runtime:
        return GoIdentity(False, why=f"{exe} is not a Go binary")
    grpc = mods.get(GRPC_MODULE) or ("linked" if grpc_sym else None)
    if stripped_blind:
        why = f"{exe} is a stripped Go binary with no function table (.gopclntab)"
    else:
        why = "" if grpc else f"{exe} is a Go binary without grpc-go"
    return GoIdentity(True, version, grpc, why)


def _socket_inodes(ports: set[int]) -> dict[int, int]:
    """inode -> port, for TCP sockets listening on or connected to one of the ports."""
    found: dict[int, int] = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) < 10 or f[3] not in (_TCP_LISTEN, _TCP_ESTABLISHED):
                continue
            lport = int(f[1].rsplit(":", 1)[1], 16)
            rport = int(f[2].rsplit(":", 1)[1], 16)
            for p in (lport, rport):
                if p in ports:
                    found[int(f[9])] = p
    return found


def pids_using_ports(ports: list[int]) -> dict[int, set[int]]:
    inodes = _socket_inodes(set(ports))
    out: dict[int, set[int]] = {}
    if not inodes:
        return out
    for d in PROC.iterdir():
        if not d.name.isdigit():
            continue
        try:
            fds = os.listdir(d / "fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(d / "fd" / fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                port = inodes.get(int(link[8:-1]))
                if port is not None:
                    out.setdefault(int(d.name), set()).add(port)
    return out


def find_grpc_go_targets(ports: list[int]) -> list[Target]:
    """Go processes linking grpc-go that listen on or connect to one of ``ports``."""
    by_port = pids_using_ports(ports) if ports else {}
    seen: dict[str, GoIdentity] = {}
    out: list[Target] = []
    for pid in sorted(by_port):
        try:
            exe = os.readlink(PROC / str(pid) / "exe")
        except OSError:
            continue  # gone, a kernel thread, or not ours to read
        ident = seen.get(exe)
        if ident is None:
            ident = seen[exe] = identify(Path(exe))
        if ident.go and ident.grpc_version:
            out.append(Target(pid, exe, ident.go_version, ident.grpc_version, sorted(by_port[pid])))
    return out
