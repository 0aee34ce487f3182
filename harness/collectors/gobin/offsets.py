"""The generated offsets table: what the probes need from a grpc-go binary without DWARF.

`scripts/gen-grpc-offsets` builds many grpc-go versions unstripped and calls ``extract``
on each: from DWARF, the argument lists of the probed functions and the struct members
the resolver reads; from the function table, each probed function's source file and line
(the fingerprint that names a grpc-go version when the build info does not). The table
has three parts, each keyed by the version that decides it:

- ``grpc``: per grpc-go version, its transport structs, its functions' parameters and its
  fingerprint;
- ``xnet``: per golang.org/x/net version, the http2/hpack structs and WriteDataPadded;
- ``go``: per Go minor version, the standard library's structs (net, internal/poll, itab).

``view`` assembles, for one binary, what DWARF would have given the resolver. An exact
grpc-go version is required; x/net and Go may fall back to the members on which every
table entry around them agrees (noted), never to a guess.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from elftools.elf.elffile import ELFFile

from harness.collectors.gobin.elfgo import (
    Function,
    GoBinary,
    Member,
    Param,
    Struct,
    read_go_binary,
)
from harness.collectors.gobin.pclntab import (
    KIND_MASK,
    TYPE_KIND_OFF,
    Pclntab,
    find_type_descriptors,
    probe_pc,
    read_pclntab,
    relative_source,
    types_base,
    va_bytes,
)

TABLE_FILE = Path(__file__).with_name("grpc_offsets.json")
TABLE_FORMAT = 1
GRPC = "google.golang.org/grpc"
XNET = "golang.org/x/net"
_TRANSPORT = f"{GRPC}/internal/transport"
_MEM = f"{GRPC}/mem"
CREDS = f"{GRPC}/internal/credentials"  # grpc-go's TLS wrapper (syscallConn) lives here
_HTTP2 = f"{XNET}/http2"


def part_of(name: str) -> str:
    """Which version decides a struct or function: grpc, xnet or go."""
    bare = name.lstrip("*")
    if bare.startswith((_TRANSPORT + ".", _MEM + ".", CREDS + ".")):
        return "grpc"
    if bare.startswith(_HTTP2):
        return "xnet"
    return "go"


# x/net functions grpc-go always links: their source lines tell x/net versions apart when
# the build info does not (GOPATH builds). Only fingerprinted, never probed.
XNET_FINGERPRINT = (
    f"{_HTTP2}.(*Framer).WriteDataPadded",
    f"{_HTTP2}.(*Framer).ReadFrame",
    f"{_HTTP2}.(*Framer).WriteHeaders",
    f"{_HTTP2}.(*Framer).WriteSettings",
)


def runtime_name(dwarf_name: str) -> str:
    """The name the runtime gives a type: the package name, not its path."""
    star = "*" if dwarf_name.startswith("*") else ""
    return star + dwarf_name.lstrip("*").rsplit("/", 1)[-1]


def go_minor(version: str | None) -> str | None:
    m = re.match(r"go(\d+)\.(\d+)", version or "")
    return f"go{m.group(1)}.{m.group(2)}" if m else None


def version_key(v: str) -> tuple[int, ...]:
    """Order module versions and Go minors (pseudo-versions sort by their base)."""
    return tuple(int(x) for x in re.findall(r"\d+", v.split("-")[0])[:3])


# -- extraction (generator and test) ----------------------------------------------------


def _structs_json(gb: GoBinary, part: str) -> dict[str, Any]:
    return {
        name: {
            "size": s.size,
            "members": {m.name: [m.offset, m.type_name] for m in s.members.values()},
        }
        for name, s in sorted(gb.structs.items())
        if part_of(name) == part
    }


def _params_json(fn: Function) -> list[list[Any]]:
    return [[p.name, p.type_name, p.words, p.floats, p.output, p.entry_regs] for p in fn.params]


def fingerprint(
    pt: Pclntab, functions: tuple[str, ...], part: str = "grpc"
) -> dict[str, list[Any]]:
    """Source file (inside its module) and line of each function's entry, for the functions
    of one part (grpc: the probed ones; xnet: XNET_FINGERPRINT)."""
    out: dict[str, list[Any]] = {}
    module = GRPC if part == "grpc" else XNET
    for name in functions if part == "grpc" else XNET_FINGERPRINT:
        f = pt.functions.get(name)
        if f is None or part_of(name) != part:
            continue
        rel = relative_source(f.file, module)
        if rel is not None:
            out[name] = [rel, f.line]
    return out


def extract(
    path: Path, functions: tuple[str, ...], structs: tuple[str, ...], types: tuple[str, ...]
) -> dict[str, Any]:
    """One unstripped binary's contribution to the table, from its DWARF."""
    gb = read_go_binary(path, symbol_names=functions, struct_names=structs, type_names=types,
                        function_names=functions)  # fmt: skip
    with path.open("rb") as f:
        elf = ELFFile(f)
        pt = read_pclntab(elf, set(functions) | set(XNET_FINGERPRINT))
        kinds: dict[str, dict[str, int]] = {"grpc": {}, "xnet": {}, "go": {}}
        for t in types:
            addr = gb.runtime_type(t)
            if addr is not None:
                kinds[part_of(t)][runtime_name(t)] = _kind_at(elf, addr)
    funcs = {n: _params_json(fn) for n, fn in sorted(gb.functions.items())}
    return {
        "go": gb.go_version,
        "grpc": gb.modules.get(GRPC),
        "xnet": gb.modules.get(XNET),
        "parts": {
            "grpc": {
                "structs": _structs_json(gb, "grpc"),
                "functions": {n: p for n, p in funcs.items() if part_of(n) == "grpc"},
                "fingerprint": fingerprint(pt, functions),
                "type_kinds": kinds["grpc"],
            },
            "xnet": {
                "structs": _structs_json(gb, "xnet"),
                "functions": {n: p for n, p in funcs.items() if part_of(n) == "xnet"},
                "fingerprint": fingerprint(pt, functions, "xnet"),
                "type_kinds": kinds["xnet"],
            },
            "go": {
                "structs": _structs_json(gb, "go"),
                "type_kinds": kinds["go"],
            },
        },
    }


def _kind_at(elf: ELFFile, addr: int) -> int:
    b = va_bytes(elf, addr + TYPE_KIND_OFF, 1)
    return b[0] & KIND_MASK if b else 0


# -- reading the table (resolver) --------------------------------------------------------


@cache
def table_digest(path: Path = TABLE_FILE) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    except OSError:
        return "none"


@cache
def load_table(path: Path = TABLE_FILE) -> dict[str, Any]:
    try:
        t = json.loads(path.read_text())
    except (OSError, ValueError):
        return {"format": TABLE_FORMAT, "grpc": {}, "xnet": {}, "go": {}}
    return t if t.get("format") == TABLE_FORMAT else {"grpc": {}, "xnet": {}, "go": {}}


def _consensus(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """What every entry agrees on: structs member by member, functions whole."""
    out: dict[str, Any] = {"structs": {}, "functions": {}, "type_kinds": {}}
    if not entries:
        return out
    first = entries[0]
    for sname, s in first.get("structs", {}).items():
        others = [e.get("structs", {}).get(sname) for e in entries[1:]]
        if any(o is None for o in others):
            continue
        members = {
            m: v for m, v in s["members"].items()
            if all(o["members"].get(m) == v for o in others)
        }  # fmt: skip
        size = s["size"] if all(o["size"] == s["size"] for o in others) else 0
        out["structs"][sname] = {"size": size, "members": members}
    for key in ("functions", "type_kinds"):
        for n, v in first.get(key, {}).items():
            if all(e.get(key, {}).get(n) == v for e in entries[1:]):
                out[key][n] = v
    return out


@dataclass
class View:
    """The table's answer for one binary: its part entries and how each was chosen."""

    grpc_version: str
    parts: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def pick(
    table: dict[str, Any], part: str, version: str | None, what: str
) -> tuple[dict[str, Any] | None, str]:
    """The entry for ``version`` in one part, or the agreement of the entries around it."""
    entries: dict[str, Any] = table.get(part, {})
    if version is not None and version in entries:
        return entries[version], ""
    if not entries:
        return None, f"the table has no {what} entries"
    keys = sorted(entries, key=version_key)
    if version is None:
        span = keys
        why = f"{what} version unknown"
    else:
        lo, hi = version_key(keys[0]), version_key(keys[-1])
        if not lo <= version_key(version) <= hi:
            return None, f"{what} {version} is outside the table ({keys[0]} to {keys[-1]})"
        span = keys
        why = f"{what} {version} is not in the table"
    return _consensus([entries[k] for k in span]), (
        f"{why}: used the layouts all {len(span)} table entries ({keys[0]} to {keys[-1]}) agree on"
    )


def identify_by_fingerprint(
    table: dict[str, Any], fp: dict[str, list[Any]], part: str = "grpc"
) -> tuple[list[str], str]:
    """Versions of one part whose recorded source files and lines match this binary's."""
    what = "grpc-go" if part == "grpc" else "x/net"
    if len(fp) < 2:
        return [], f"too few {what} functions with source lines to compare"
    hits = []
    for ver, e in table.get(part, {}).items():
        known = e.get("fingerprint", {})
        if all(known.get(n) == v for n, v in fp.items()):
            hits.append(ver)
    hits.sort(key=version_key)
    return hits, "" if hits else f"no {what} version in the table has these source lines"


def same_layout(table: dict[str, Any], versions: list[str], part: str = "grpc") -> bool:
    es = [table[part][v] for v in versions]
    return all(
        e["structs"] == es[0]["structs"] and e["functions"] == es[0]["functions"] for e in es
    )


def pick_xnet(
    table: dict[str, Any], version: str | None, pt: Pclntab, functions: tuple[str, ...]
) -> tuple[dict[str, Any] | None, str]:
    """The x/net entry: by the build info's version, else by fingerprint, else the layouts
    every entry agrees on."""
    if version is None:
        hits, _ = identify_by_fingerprint(table, fingerprint(pt, functions, "xnet"), "xnet")
        if hits and same_layout(table, hits, "xnet"):
            return table["xnet"][hits[0]], (
                f"x/net identified by the source lines of its functions: {', '.join(hits)}"
            )
    return pick(table, "xnet", version, "x/net")


def synthesize(
    path: Path,
    elf: ELFFile,
    pt: Pclntab,
    parts: dict[str, dict[str, Any]],
    go_version: str | None,
    modules: dict[str, str],
    types: tuple[str, ...],
) -> GoBinary:
    """A GoBinary as DWARF and the symbol table would have given it, from the function
    table (addresses), the offsets table (layouts) and the type data (descriptors)."""
    gb = GoBinary(path, elf.header["e_type"], go_version, modules, {}, None)
    for p in parts.values():
        for sname, s in p.get("structs", {}).items():
            gb.structs[sname] = Struct(
                sname, s["size"], {m: Member(m, v[0], v[1]) for m, v in s["members"].items()}
            )
    params = {n: v for p in parts.values() for n, v in p.get("functions", {}).items()}
    for name, fi in pt.functions.items():
        gb.symbols[name] = fi.entry
        pc = probe_pc(elf, fi)
        if pc is None or name not in params:
            continue  # the resolver then names what is missing
        gb.functions[name] = Function(
            name, fi.entry, pc, [Param(n, t, w, fl, o, r) for n, t, w, fl, o, r in params[name]]
        )
    kinds = {n: k for p in parts.values() for n, k in p.get("type_kinds", {}).items()}
    base = types_base(elf)
    if base is not None and gb.elf_type == "ET_EXEC":
        want = {runtime_name(t): kinds[runtime_name(t)] for t in types if runtime_name(t) in kinds}
        found = find_type_descriptors(elf, base, want)
        for t in types:
            if runtime_name(t) in found:
                gb.runtime_types[t] = found[runtime_name(t)]
    return gb
