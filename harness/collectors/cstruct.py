"""Build ctypes layouts from a BPF event header, so each struct is defined once, in C."""

from __future__ import annotations

import ctypes
import re
from pathlib import Path
from typing import Any

from harness.errors import CollectorError

_TYPES: dict[str, type] = {
    "u8": ctypes.c_uint8,
    "u16": ctypes.c_uint16,
    "u32": ctypes.c_uint32,
    "u64": ctypes.c_uint64,
    "s8": ctypes.c_int8,
    "s16": ctypes.c_int16,
    "s32": ctypes.c_int32,
    "s64": ctypes.c_int64,
    "char": ctypes.c_char,
}
_DEFINE = re.compile(r"^#define\s+(PB_\w+)\s+(\d+)\b", re.M)
_STRUCT = re.compile(r"struct\s+(\w+)\s*\{(.*?)\};", re.S)
_FIELD = re.compile(r"^\s*(\w+)\s+(\w+)(?:\[(\w+)\])?\s*;")
_INCLUDE = re.compile(r'^#include\s+"([\w.]+)"', re.M)


def _with_includes(path: Path, seen: frozenset[Path] = frozenset()) -> str:
    """The header's text with its local #include "x.h" files inlined (pb_common.h), as the
    C compiler sees them."""
    if path in seen:
        return ""
    text = path.read_text()
    return _INCLUDE.sub(lambda m: _with_includes(path.parent / m.group(1), seen | {path}), text)


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


class Header:
    """The #define constants and ctypes structs of one header (fixed-width fields only)."""

    def __init__(self, path: Path, overrides: dict[str, int] | None = None) -> None:
        text = _strip_comments(_with_includes(path))
        self.defines: dict[str, int] = {k: int(v) for k, v in _DEFINE.findall(text)}
        self.defines.update(overrides or {})
        self.structs: dict[str, type[ctypes.Structure]] = {}
        for name, body in _STRUCT.findall(text):
            fields: list[tuple[str, Any]] = []
            for line in body.splitlines():
                if not line.strip():
                    continue
                m = _FIELD.match(line)
                if not m or m.group(1) not in _TYPES:
                    raise CollectorError(f"{path}: cannot map field {line.strip()!r} of {name}")
                # a base type, or an array type of it (ctypes makes those by multiplying)
                ctype: Any = _TYPES[m.group(1)]
                fname, dim = m.group(2), m.group(3)
                if dim is not None:
                    n = int(dim) if dim.isdigit() else self.defines[dim]
                    ctype = ctype * n
                fields.append((fname, ctype))
            self.structs[name] = type(name, (ctypes.Structure,), {"_fields_": fields})

    def enum(self, prefix: str) -> dict[int, str]:
        """The values of one family of #defines, named by what follows the prefix, in lower
        case: enum("PB_ROLE_") is {0: "unknown", 1: "client", 2: "server"}."""
        return {v: k.removeprefix(prefix).lower() for k, v in self.defines.items()
                if k.startswith(prefix)}  # fmt: skip

    def offset(self, struct: str, field: str) -> int:
        return int(getattr(self.structs[struct], field).offset)
