"""Read what a Go ELF binary says about itself: symbols, build info, DWARF types and functions.

Pure reading of one file (pyelftools), no process and no BPF. The DWARF walk is the slow
part (a few seconds for a 15 MB binary); callers cache its results by binary hash.
"""

from __future__ import annotations

import bisect
import io
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from elftools.common.exceptions import ELFError
from elftools.dwarf.dwarf_expr import DWARFExprParser
from elftools.dwarf.locationlists import LocationEntry, LocationParser
from elftools.elf.elffile import ELFFile

# Go's DWARF extensions (cmd/internal/dwarf)
DW_AT_GO_KIND = 0x2900
DW_AT_GO_RUNTIME_TYPE = 0x2904
# reflect.Kind values that matter for the register ABI
KIND_BOOL, KIND_FLOAT32, KIND_FLOAT64, KIND_COMPLEX64, KIND_COMPLEX128 = 1, 13, 14, 15, 16
KIND_ARRAY, KIND_CHAN, KIND_FUNC, KIND_INTERFACE, KIND_MAP = 17, 18, 19, 20, 21
KIND_PTR, KIND_SLICE, KIND_STRING, KIND_STRUCT, KIND_UNSAFE_PTR = 22, 23, 24, 25, 26

BUILDINFO_MAGIC = b"\xff Go buildinf:"


class NotGoBinary(Exception):
    """The file is not an ELF Go binary we can read."""


@dataclass
class Member:
    name: str
    offset: int
    type_name: str


@dataclass
class Struct:
    name: str
    size: int
    members: dict[str, Member]


@dataclass
class Param:
    name: str
    type_name: str
    words: int | None  # integer registers it takes; None when not register-assignable
    floats: int
    output: bool
    entry_regs: list[int] | None  # DWARF register numbers at entry, from the location list


@dataclass
class Function:
    name: str
    low_pc: int
    probe_pc: int  # first instruction after the stack-growth check (DWARF prologue_end)
    params: list[Param]  # registers as they are at probe_pc


@dataclass
class GoBinary:
    path: Path
    elf_type: str  # ET_EXEC | ET_DYN
    go_version: str | None
    modules: dict[str, str]  # module path -> version, from the build info
    symbols: dict[str, int]  # name -> value, functions and itabs (what we look up)
    types_base: int | None  # runtime.types: base of DW_AT_go_runtime_type
    structs: dict[str, Struct] = field(default_factory=dict)
    runtime_types: dict[str, int] = field(default_factory=dict)  # type name -> descriptor addr
    functions: dict[str, Function] = field(default_factory=dict)

    def runtime_type(self, name: str) -> int | None:
        off = self.runtime_types.get(name)
        if off is None:
            return None
        # Go >= 1.20 stores offsets from runtime.types; older linkers absolute addresses
        if self.types_base is not None and off < self.types_base:
            return self.types_base + off
        return off


def uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    """Go's unsigned varint at ``pos``: (value, position after it)."""
    v = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        if b < 0x80:
            return v, pos
        shift += 7


def parse_buildinfo(data: bytes) -> tuple[str | None, dict[str, str]]:
    """Go version and module versions from a .go.buildinfo section (inline-string format)."""
    if not data.startswith(BUILDINFO_MAGIC) or len(data) < 32:
        return None, {}
    flags = data[15]
    if not flags & 2:  # pre-1.18 pointer format: not worth supporting here
        return None, {}
    n, pos = uvarint(data, 32)
    version = data[pos : pos + n].decode(errors="replace")
    n, pos = uvarint(data, pos + n)
    modinfo = data[pos : pos + n].decode(errors="replace")
    mods: dict[str, str] = {}
    for line in modinfo.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[0] in ("mod", "dep"):
            mods[parts[1]] = parts[2]
        elif len(parts) >= 2 and parts[0] == "=>" and mods:
            pass  # a replace directive: keep the required version
    return version, mods


# a file up to this size is parsed from memory after one read (in_memory)
IN_MEMORY_MAX = 128 << 20


def in_memory(f: BinaryIO) -> BinaryIO:
    """The file's bytes to parse, read whole when it is at most IN_MEMORY_MAX: pyelftools
    reads a header or a symbol at a time (87k reads for a grpc-go server's symbol table),
    each a round trip on a network or 9p root (a kernel guest's: 25 minutes). A larger
    file is parsed from the file itself, so memory stays bounded."""
    size = os.fstat(f.fileno()).st_size
    return io.BytesIO(f.read()) if size <= IN_MEMORY_MAX else f


def _open(f: BinaryIO) -> ELFFile:
    try:
        return ELFFile(in_memory(f))
    except ELFError as e:
        raise NotGoBinary(f"not an ELF file ({e})") from e


def quick_info(path: Path) -> tuple[str | None, dict[str, str]]:
    """Go version and modules without touching DWARF; raises NotGoBinary for non-Go files."""
    with path.open("rb") as f:
        elf = _open(f)
        sec = elf.get_section_by_name(".go.buildinfo")
        if sec is None:
            raise NotGoBinary("no .go.buildinfo section: not a Go binary")
        return parse_buildinfo(sec.data())


def read_go_binary(
    path: Path,
    *,
    symbol_names: Iterable[str],
    struct_names: Iterable[str],
    type_names: Iterable[str],
    function_names: Iterable[str],
) -> GoBinary:
    """Read the named symbols, structs, runtime type descriptors and functions."""
    want_syms, want_structs = set(symbol_names), set(struct_names)
    want_types, want_funcs = set(type_names), set(function_names)
    with path.open("rb") as f:
        elf = _open(f)
        bi = elf.get_section_by_name(".go.buildinfo")
        if bi is None:
            raise NotGoBinary("no .go.buildinfo section: not a Go binary")
        go_version, modules = parse_buildinfo(bi.data())
        symbols: dict[str, int] = {}
        types_base = None
        symtab = elf.get_section_by_name(".symtab")
        if symtab is not None:
            for s in symtab.iter_symbols():
                if s.name in want_syms:
                    symbols[s.name] = s["st_value"]
                elif s.name == "runtime.types":
                    types_base = s["st_value"]
        gb = GoBinary(path, elf.header["e_type"], go_version, modules, symbols, types_base)
        if not elf.has_dwarf_info() or not (want_structs or want_types or want_funcs):
            return gb  # the DWARF walk is the slow part: only when something is asked of it
        _read_dwarf(elf, gb, want_structs, want_types, want_funcs)
    return gb


def _read_dwarf(
    elf: ELFFile, gb: GoBinary, want_structs: set[str], want_types: set[str],
    want_funcs: set[str],
) -> None:  # fmt: skip
    dwarf = elf.get_dwarf_info()
    loc_parser = LocationParser(dwarf.location_lists())
    expr_parser = DWARFExprParser(dwarf.structs)
    for cu in dwarf.iter_CUs():
        version = cu["version"]
        ends: list[int] | None = None  # this CU's prologue_end addresses, read when needed
        for die in cu.iter_DIEs():
            tag = die.tag
            if tag not in ("DW_TAG_structure_type", "DW_TAG_pointer_type", "DW_TAG_subprogram"):
                continue
            nattr = die.attributes.get("DW_AT_name")
            if nattr is None:
                continue
            name = nattr.value.decode(errors="replace")
            if name in want_types and DW_AT_GO_RUNTIME_TYPE in die.attributes:
                gb.runtime_types.setdefault(name, die.attributes[DW_AT_GO_RUNTIME_TYPE].value)
            if tag == "DW_TAG_structure_type" and name in want_structs and name not in gb.structs:
                gb.structs[name] = _struct(die)
            elif (
                tag == "DW_TAG_subprogram"
                and name in want_funcs
                and name not in gb.functions
                and "DW_AT_low_pc" in die.attributes  # the out-of-line copy, not an abstract one
            ):
                if ends is None:
                    ends = _prologue_ends(dwarf, cu)
                gb.functions[name] = _function(die, name, version, ends, loc_parser, expr_parser)


def _struct(die: Any) -> Struct:
    members: dict[str, Member] = {}
    for c in die.iter_children():
        if c.tag != "DW_TAG_member":
            continue
        loc = c.attributes.get("DW_AT_data_member_location")
        if loc is None or not isinstance(loc.value, int):
            continue
        name = c.attributes["DW_AT_name"].value.decode(errors="replace")
        members[name] = Member(name, loc.value, _type_name(c))
    size = die.attributes.get("DW_AT_byte_size")
    return Struct(die.attributes["DW_AT_name"].value.decode(), size.value if size else 0, members)


def _type_die(die: Any) -> Any | None:
    if "DW_AT_type" not in die.attributes:
        return None
    return die.get_DIE_from_attribute("DW_AT_type")


def _type_name(die: Any) -> str:
    t = _type_die(die)
    if t is None:
        return ""
    n = t.attributes.get("DW_AT_name")
    return n.value.decode(errors="replace") if n else t.tag


def _resolve_typedefs(t: Any) -> Any:
    for _ in range(16):
        if t is None or t.tag != "DW_TAG_typedef":
            return t
        t = _type_die(t)
    return t


def abi_words(t: Any, depth: int = 0) -> tuple[int, int] | None:
    """(integer registers, float registers) a value of DWARF type ``t`` takes under Go's
    register ABI (ABIInternal, amd64), or None when it is never register-assigned."""
    t = _resolve_typedefs(t)
    if t is None or depth > 8:
        return None
    kind_attr = t.attributes.get(DW_AT_GO_KIND)
    kind = kind_attr.value if kind_attr else None
    size_attr = t.attributes.get("DW_AT_byte_size")
    size = size_attr.value if size_attr else 8
    if t.tag == "DW_TAG_pointer_type" or kind in (KIND_PTR, KIND_UNSAFE_PTR, KIND_CHAN, KIND_MAP,
                                                   KIND_FUNC):  # fmt: skip
        return 1, 0
    if kind == KIND_STRING:
        return 2, 0
    if kind == KIND_SLICE:
        return 3, 0
    if kind == KIND_INTERFACE:
        return 2, 0
    if kind in (KIND_FLOAT32, KIND_FLOAT64):
        return 0, 1
    if kind in (KIND_COMPLEX64, KIND_COMPLEX128):
        return 0, 2
    if t.tag == "DW_TAG_base_type":
        return (1, 0) if size <= 8 else None
    if t.tag == "DW_TAG_array_type" or kind == KIND_ARRAY:
        count = _array_len(t)
        if count == 0:
            return 0, 0
        if count == 1:
            return abi_words(_type_die(t), depth + 1)
        return None
    if t.tag == "DW_TAG_structure_type":
        ints = floats = 0
        for c in t.iter_children():
            if c.tag != "DW_TAG_member":
                continue
            w = abi_words(_type_die(c), depth + 1)
            if w is None:
                return None
            ints, floats = ints + w[0], floats + w[1]
        return ints, floats
    return None


def _array_len(t: Any) -> int | None:
    for c in t.iter_children():
        if c.tag == "DW_TAG_subrange_type":
            cnt = c.attributes.get("DW_AT_count")
            if cnt is not None:
                return int(cnt.value)
            ub = c.attributes.get("DW_AT_upper_bound")
            if ub is not None:
                return int(ub.value) + 1
    return None


def _prologue_ends(dwarf: Any, cu: Any) -> list[int]:
    lp = dwarf.line_program_for_CU(cu)
    if lp is None:
        return []
    return sorted(
        e.state.address for e in lp.get_entries() if e.state is not None and e.state.prologue_end
    )


def _function(
    die: Any, name: str, version: int, ends: list[int], lp: LocationParser, ep: DWARFExprParser
) -> Function:
    """A function and where to probe it. Not its entry: when a goroutine's stack must grow,
    the prologue calls morestack and then re-runs the function from its entry, so an entry
    probe would fire twice for one call. Past prologue_end the stack check is done."""
    low_pc = die.attributes["DW_AT_low_pc"].value
    high = die.attributes.get("DW_AT_high_pc")
    if high is None:
        high_pc = low_pc + 1
    elif high.form == "DW_FORM_addr":
        high_pc = high.value
    else:
        high_pc = low_pc + high.value
    i = bisect.bisect_left(ends, low_pc)
    probe_pc = ends[i] if i < len(ends) and ends[i] < high_pc else low_pc
    params: list[Param] = []
    for c in die.iter_children():
        if c.tag != "DW_TAG_formal_parameter":
            continue
        pname = c.attributes["DW_AT_name"].value.decode(errors="replace")
        out = bool(c.attributes["DW_AT_variable_parameter"].value) if (
            "DW_AT_variable_parameter" in c.attributes) else False  # fmt: skip
        w = abi_words(_type_die(c))
        params.append(
            Param(
                name=pname,
                type_name=_type_name(c),
                words=None if w is None else w[0],
                floats=0 if w is None else w[1],
                output=out,
                entry_regs=_entry_regs(c, low_pc, probe_pc, version, lp, ep),
            )
        )
    return Function(name, low_pc, probe_pc, params)


def _entry_regs(die: Any, low_pc: int, pc: int, version: int, lp: LocationParser,
                ep: DWARFExprParser) -> list[int] | None:  # fmt: skip
    """The registers a parameter lives in at ``pc``, per DWARF's location list."""
    attr = die.attributes.get("DW_AT_location")
    if attr is None or attr.form not in ("DW_FORM_sec_offset", "DW_FORM_loclistx"):
        return None
    try:
        loc = lp.parse_from_attribute(attr, version, die=die)
    except (ValueError, KeyError):
        return None
    if not isinstance(loc, list):
        return None
    base = low_pc
    for ent in loc:
        if not isinstance(ent, LocationEntry):
            ba = getattr(ent, "base_address", None)
            if ba is not None:
                base = ba
            continue
        absolute = getattr(ent, "is_absolute", False)
        begin = ent.begin_offset if absolute else base + ent.begin_offset
        end = ent.end_offset if absolute else base + ent.end_offset
        if not begin <= pc < end:
            continue
        regs: list[int] = []
        for op in ep.parse_expr(ent.loc_expr):
            if op.op_name.startswith("DW_OP_reg") and op.op_name[9:].isdigit():
                regs.append(int(op.op_name[9:]))
            elif op.op_name == "DW_OP_piece":
                continue
            else:
                return None  # in memory or computed: not a plain register
        return regs
    return None
