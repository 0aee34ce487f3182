"""Read Go's own function table (.gopclntab) and type descriptors: what survives stripping.

`go build -ldflags="-s -w"` drops the ELF symbol table and DWARF, but the runtime needs
``.gopclntab`` (function names, entry addresses, source files and lines, for tracebacks)
and the type descriptors (for reflection and interfaces), so both stay. Formats read:
the pcHeader of Go 1.18-1.19 (magic 0xfffffff0) and Go >= 1.20 (0xfffffff1; its _func
gains startLine). Reading of one file (GNU objdump disassembles for RET instructions),
no BPF.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from harness.collectors.gobin.elfgo import uvarint

MAGIC_118 = 0xFFFFFFF0  # Go 1.18, 1.19
MAGIC_120 = 0xFFFFFFF1  # Go >= 1.20
# internal/abi.Type (runtime._type before 1.21): the fields read here have kept these
# offsets since Go 1.14; the generated table's test checks them against DWARF.
TYPE_KIND_OFF, TYPE_STR_OFF = 23, 40
KIND_MASK = 0x1F
KIND_PTR, KIND_SLICE, KIND_STRUCT = 22, 23, 25

# A module path with its version, as module builds (with or without -trimpath) leave in
# source file names: ".../google.golang.org/grpc@v1.33.3/internal/transport/x.go".
_VERSIONED = re.compile(r"@(v[0-9][^/]*)/")


class NoPclntab(Exception):
    """The file has no Go function table we can read; the message says why."""


class NoDisassembly(Exception):
    """A function's instructions could not be listed; the message says why."""


@dataclass(frozen=True)
class FuncInfo:
    name: str
    entry: int
    end: int  # entry of the next function
    file: str  # source file of the entry instruction
    line: int  # source line of the entry instruction


@dataclass
class Pclntab:
    go_format: str  # "1.18" | "1.20"
    functions: dict[str, FuncInfo]

    def source_version(self, module: str, names: list[str]) -> str | None:
        """The module version written into the source paths of these functions, if one."""
        seen = set()
        for n in names:
            f = self.functions.get(n)
            if f is None:
                continue
            i = f.file.find(module + "@")
            if i >= 0:
                m = _VERSIONED.match(f.file, i + len(module))
                if m:
                    seen.add(m.group(1))
        return seen.pop() if len(seen) == 1 else None


def relative_source(file: str, module: str) -> str | None:
    """A source file's path inside ``module`` whatever the build (module cache, GOPATH,
    vendor, -trimpath): ".../google.golang.org/grpc@v1.33.3/internal/transport/http2_server.go"
    -> "internal/transport/http2_server.go"."""
    i = file.rfind(module + "/")
    j = file.rfind(module + "@")
    if j > i:
        k = file.find("/", j + len(module))
        return file[k + 1 :] if k > 0 else None
    return file[i + len(module) + 1 :] if i >= 0 else None


def _first_value(pctab: bytes, off: int) -> int:
    """The value a pc-value table gives at the function's entry (Go's runtime.step)."""
    uv, _ = uvarint(pctab, off)
    return -1 + (-(uv & 1) ^ (uv >> 1))


def _cstring(buf: bytes, off: int) -> str:
    end = buf.find(b"\0", off)
    return buf[off : end if end >= 0 else len(buf)].decode(errors="replace")


def _section(elf: ELFFile, name: str) -> Any | None:
    return elf.get_section_by_name(name)


def read_pclntab(elf: ELFFile, wanted: set[str] | None = None) -> Pclntab:
    """The functions of the binary (those named in ``wanted``, or all)."""
    sec = _section(elf, ".gopclntab")
    if sec is None:
        raise NoPclntab("no .gopclntab section")
    data = sec.data()
    if len(data) < 72:
        raise NoPclntab(".gopclntab is truncated")
    magic, _, _, _min_lc, ptr_size = struct.unpack_from("<IBBBB", data, 0)
    if magic not in (MAGIC_118, MAGIC_120) or ptr_size != 8:
        raise NoPclntab(f".gopclntab of an unsupported Go version (magic {magic:#x})")
    nfunc, _nfiles, text_start, fn_off, cu_off, file_off, pc_off, ln_off = struct.unpack_from(
        "<8Q", data, 8
    )
    if text_start == 0:  # a position-independent binary: filled by a relocation at load
        text = _section(elf, ".text")
        if text is None:
            raise NoPclntab("no .text section")
        text_start = text["sh_addr"]
    names, cutab, filetab = data[fn_off:], data[cu_off:], data[file_off:]
    pctab, ftab = data[pc_off:], data[ln_off:]
    new = magic == MAGIC_120
    entries = struct.unpack_from(f"<{2 * (nfunc + 1)}I", ftab, 0)
    out: dict[str, FuncInfo] = {}
    for i in range(nfunc):
        entry_off, func_off = entries[2 * i], entries[2 * i + 1]
        name_off = struct.unpack_from("<i", ftab, func_off + 4)[0]
        name = _cstring(names, name_off)
        if wanted is not None and name not in wanted:
            continue
        pcfile, pcln, _np, cu = struct.unpack_from("<IIII", ftab, func_off + 20)
        fileno = _first_value(pctab, pcfile) if pcfile else -1
        file = ""
        if fileno >= 0:
            (foff,) = struct.unpack_from("<I", cutab, 4 * (cu + fileno))
            file = _cstring(filetab, foff)
        line = _first_value(pctab, pcln) if pcln else 0
        out.setdefault(
            name,
            FuncInfo(name, text_start + entry_off, text_start + entries[2 * i + 2], file, line),
        )
    return Pclntab("1.20" if new else "1.18", out)


def va_bytes(elf: ELFFile, addr: int, n: int) -> bytes | None:
    for seg in elf.iter_segments():
        if seg["p_type"] != "PT_LOAD":
            continue
        lo = seg["p_vaddr"]
        if lo <= addr and addr + n <= lo + seg["p_filesz"]:
            seg.stream.seek(seg["p_offset"] + addr - lo)
            return seg.stream.read(n)
    return None


# The stack-growth check every Go function with a frame starts with (amd64, g in R14):
#   CMPQ SP, 16(R14)                       49 3b 66 10
# or, for frames past the small-frame slack:
#   LEAQ -N(SP), R12; CMPQ R12, 16(R14)    4c 8d 64 24 NN | 4c 8d a4 24 NNNNNNNN ; 4d 3b 66 10
# then JBE to the morestack call: 76 NN | 0f 86 NNNNNNNN. Go >= 1.21 then saves the frame
# pointer first (PUSHQ BP; MOVQ SP, BP: 55 48 89 e5) and puts prologue_end after it; older
# Go allocates the frame first (SUBQ) and puts prologue_end right after the JBE.
_CHECK = re.compile(
    rb"(?:\x49\x3b\x66\x10|\x4c\x8d\x64\x24.\x4d\x3b\x66\x10|\x4c\x8d\xa4\x24....\x4d\x3b\x66\x10)"
    rb"(?:\x76.|\x0f\x86....)(?:\x55\x48\x89\xe5)?",
    re.DOTALL,
)


def probe_pc(elf: ELFFile, fn: FuncInfo) -> int | None:
    """The first instruction past the stack-growth check and the frame pointer's save, where
    DWARF's prologue_end is (see elfgo._function for why not the entry). None when the
    prologue is not one we know."""
    code = va_bytes(elf, fn.entry, min(32, fn.end - fn.entry))
    if code is None:
        return None
    m = _CHECK.match(code)
    return fn.entry + m.end() if m else None


_RET = re.compile(r"^\s*([0-9a-f]+):\s+ret[q]?\s*$", re.M)


def ret_addresses(path: Path, fn: FuncInfo, listing: str | None = None) -> list[int]:
    """The RET instructions of one function, by disassembling [entry, end) with GNU
    objdump: it needs no symbols, so stripped binaries work, and a uprobe placed anywhere
    but an instruction boundary would corrupt the program, so no byte scan. ``listing``:
    that disassembly, when the caller has it already."""
    return [int(a, 16) for a in _RET.findall(listing or disassemble(path, fn))]


def disassemble(path: Path, fn: FuncInfo) -> str:
    """GNU objdump's listing of one function ([entry, end))."""
    exe = shutil.which("objdump")
    if exe is None:
        raise NoDisassembly("GNU objdump (binutils) is needed to find RET instructions")
    out = subprocess.run(
        [exe, "-d", "--no-show-raw-insn", f"--start-address={fn.entry:#x}",
         f"--stop-address={fn.end:#x}", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise NoDisassembly(f"objdump failed on {path}: {out.stderr.strip()[-200:]}")
    return out.stdout


def _name_at(buf: bytes, off: int) -> str | None:
    """A runtime type name (internal/abi.Name): a flags byte, a uvarint length, the bytes."""
    if off <= 0 or off + 2 > len(buf):
        return None
    n, pos = uvarint(buf, off + 1)
    return buf[pos : pos + n].decode(errors="replace")


def find_type_descriptors(elf: ELFFile, types_base: int, names: dict[str, int]) -> dict[str, int]:
    """Addresses of runtime type descriptors by their runtime name ("*net.TCPConn") and kind.

    A descriptor's str field is the offset of its name from the start of the type data
    (runtime.types). Names are found first, then descriptors whose str points at them and
    whose kind matches. A name with no or several candidates is left out (never guessed)."""
    rodata = _section(elf, ".rodata")
    if rodata is None:
        return {}
    buf = rodata.data()
    base = rodata["sh_addr"]
    if types_base < base or types_base >= base + len(buf):
        return {}
    start = types_base - base
    out: dict[str, int] = {}
    for name, kind in names.items():
        cands = []
        # a named type whose pointer type exists shares that one's name ("*T", read with
        # the star skipped: tflagExtraStar)
        for spelled in {name, "*" + name.lstrip("*")}:
            raw = spelled.encode()
            for m in re.finditer(re.escape(raw), buf):
                p = m.start()
                # the length prefix: one byte for names under 128 bytes, after a flags byte
                if p >= 2 and buf[p - 1] == len(raw) and _name_at(buf, p - 2) == spelled:
                    cands.append(p - 2 - start)
        hits = []
        for noff in cands:
            pat = struct.pack("<i", noff)
            for m in re.finditer(re.escape(pat), buf):
                t = m.start() - TYPE_STR_OFF
                if t < start or t % 8 or buf[t + TYPE_KIND_OFF] & KIND_MASK != kind:
                    continue
                hits.append(base + t)
        if len(set(hits)) == 1:
            out[name] = hits[0]
    return out


def types_base(elf: ELFFile) -> int | None:
    """runtime.types without a symbol table: the type data opens .rodata (Go's linker puts
    type:* first there); checked against the symbol by the table's test."""
    sec = _section(elf, ".rodata")
    return sec["sh_addr"] if sec is not None else None


def open_elf(path: Path) -> tuple[Any, ELFFile]:
    f = path.open("rb")
    try:
        return f, ELFFile(f)
    except ELFError:
        f.close()
        raise
