"""Member offsets of kernel structs, read from the running kernel's BTF.

bcc compiles against whatever kernel headers are installed, and on this project's
machines those are an older kernel's (see the README): a struct walked through its
header would be read at the wrong offsets. The kernel-side collector instead reads
the few members it needs (fd -> file -> socket -> addresses) at offsets taken here
from /sys/kernel/btf/vmlinux and passed as -D cflags.

A minimal reader of the BTF format (linux/btf.h): the header, the type section and
the string section; only structs, unions and the types that lead to them matter.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

from harness.collectors.gobin.cache import cache_dir, cached
from harness.errors import CollectorError

VMLINUX = Path("/sys/kernel/btf/vmlinux")
_MAGIC = 0xEB9F
# BTF_KIND_* -> bytes that follow struct btf_type (per member when the second is True)
_EXTRA = {
    1: (4, False), 2: (0, False), 3: (12, False), 4: (12, True), 5: (12, True),
    6: (8, True), 7: (0, False), 8: (0, False), 9: (0, False), 10: (0, False),
    11: (0, False), 12: (0, False), 13: (8, True), 14: (4, False), 15: (12, True),
    16: (0, False), 17: (4, False), 18: (0, False), 19: (12, True),
}  # fmt: skip
_STRUCT, _UNION = 4, 5
# kinds that only qualify or rename another type
_ALIASES = {8, 9, 10, 11, 18}


@dataclass(frozen=True, slots=True)
class _Member:
    name: str
    type_id: int
    bit_offset: int
    bitfield: int  # size in bits when a bitfield, else 0


@dataclass(frozen=True, slots=True)
class _Type:
    kind: int
    name: str
    size: int  # size in bytes (structs, unions, ints), or the referenced type id
    members: tuple[_Member, ...]


class Btf:
    """The types of one BTF blob, looked up by struct name.

    The type section is scanned once for where each type is; members are decoded only
    for the structs a look-up walks through (a kernel has some 150k types)."""

    def __init__(self, blob: bytes) -> None:
        if len(blob) < 24 or struct.unpack_from("<H", blob, 0)[0] != _MAGIC:
            raise CollectorError("not a BTF blob (bad magic)")
        hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<IIIII", blob, 4)
        self.blob = blob
        self.strs = blob[hdr_len + str_off : hdr_len + str_off + str_len]
        # per type id: (kind, name_off, size or type, position of what follows, vlen, kflag)
        self.index: list[tuple[int, int, int, int, int, int]] = [(0, 0, 0, 0, 0, 0)]
        self.by_name: dict[str, int] = {}
        pos, end = hdr_len + type_off, hdr_len + type_off + type_len
        unpack = struct.Struct("<III").unpack_from
        while pos < end:
            name_off, info, size = unpack(blob, pos)
            pos += 12
            kind, vlen, kflag = (info >> 24) & 0x1F, info & 0xFFFF, info >> 31
            extra, per_member = _EXTRA.get(kind, (None, False))
            if extra is None:
                raise CollectorError(f"unknown BTF kind {kind}")
            self.index.append((kind, name_off, size, pos, vlen, kflag))
            if kind in (_STRUCT, _UNION) and name_off:
                self.by_name.setdefault(self._name(name_off), len(self.index) - 1)
            pos += extra * vlen if per_member else extra

    def _name(self, off: int) -> str:
        return self.strs[off : self.strs.index(b"\0", off)].decode()

    def _type(self, type_id: int) -> _Type:
        kind, name_off, size, pos, vlen, kflag = self.index[type_id]
        members: tuple[_Member, ...] = ()
        if kind in (_STRUCT, _UNION):
            ms = []
            for i in range(vlen):
                m_name, m_type, m_off = struct.unpack_from("<III", self.blob, pos + 12 * i)
                bits = m_off >> 24 if kflag else 0
                off = m_off & 0xFFFFFF if kflag else m_off
                ms.append(_Member(self._name(m_name), m_type, off, bits))
            members = tuple(ms)
        return _Type(kind, self._name(name_off), size, members)

    def _resolve(self, type_id: int) -> _Type | None:
        while type_id and self.index[type_id][0] in _ALIASES:
            type_id = self.index[type_id][2]
        return self._type(type_id) if type_id else None

    def _find(self, t: _Type, member: str) -> int | None:
        """Bit offset of a member, looking into anonymous structs and unions."""
        for m in t.members:
            if m.name == member:
                if m.bitfield:
                    raise CollectorError(f"{t.name}.{member} is a bitfield")
                return m.bit_offset
            if not m.name:
                inner = self._resolve(m.type_id)
                if inner is not None and inner.kind in (_STRUCT, _UNION):
                    off = self._find(inner, member)
                    if off is not None:
                        return m.bit_offset + off
        return None

    def offset(self, struct_name: str, member: str) -> int:
        """Byte offset of ``struct_name.member`` (members of anonymous parts included)."""
        tid = self.by_name.get(struct_name)
        if tid is None:
            raise CollectorError(f"the kernel's BTF has no struct {struct_name}")
        t = self._type(tid)
        off = self._find(t, member)
        if off is None:
            raise CollectorError(f"the kernel's struct {struct_name} has no member {member}")
        if off % 8:
            raise CollectorError(f"{struct_name}.{member} is not byte aligned")
        return off // 8


# (define, struct, member): what the collector's fd -> socket walk reads; a define of None
# is a member that must sit at offset 0 (the walk reads sock_common's fields off the sock)
Spec = tuple[tuple[str | None, str, str], ...]
SOCKET_WALK: Spec = (
    (None, "sock", "__sk_common"),
    ("PB_OFF_TASK_FILES", "task_struct", "files"),
    ("PB_OFF_FILES_FDT", "files_struct", "fdt"),
    ("PB_OFF_FDT_MAX", "fdtable", "max_fds"),
    ("PB_OFF_FDT_FD", "fdtable", "fd"),
    ("PB_OFF_FILE_INODE", "file", "f_inode"),
    ("PB_OFF_FILE_PRIV", "file", "private_data"),
    ("PB_OFF_INODE_MODE", "inode", "i_mode"),
    ("PB_OFF_SOCKET_SK", "socket", "sk"),
    ("PB_OFF_SK_DADDR", "sock_common", "skc_daddr"),
    ("PB_OFF_SK_SADDR", "sock_common", "skc_rcv_saddr"),
    ("PB_OFF_SK_DPORT", "sock_common", "skc_dport"),
    ("PB_OFF_SK_NUM", "sock_common", "skc_num"),
    ("PB_OFF_SK_FAMILY", "sock_common", "skc_family"),
    ("PB_OFF_SK_V6_DADDR", "sock_common", "skc_v6_daddr"),
    ("PB_OFF_SK_V6_SADDR", "sock_common", "skc_v6_rcv_saddr"),
    ("PB_OFF_SK_PROTOCOL", "sock", "sk_protocol"),
    ("PB_OFF_SK_TYPE", "sock", "sk_type"),
)


# (define, struct, member): which image of which process the current task runs. A tgid
# is reused by a new process (its thread group leader's start time differs) and keeps
# its number across an exec (start time kept, the exec count moves on).
TASK_IMAGE: Spec = (
    ("PB_OFF_TASK_GROUP_LEADER", "task_struct", "group_leader"),
    ("PB_OFF_TASK_START_TIME", "task_struct", "start_time"),
    ("PB_OFF_TASK_EXEC_ID", "task_struct", "self_exec_id"),
)


def socket_walk_defines(path: Path = VMLINUX, *, use_cache: bool = True) -> dict[str, int]:
    """-D settings for the collector's fd -> socket walk; PB_FD_SOCK=0 when BTF is missing."""
    return _offset_defines(SOCKET_WALK, "PB_FD_SOCK", path, use_cache)


def task_image_defines(path: Path = VMLINUX, *, use_cache: bool = True) -> dict[str, int]:
    """-D settings for pb_task_image (pb_common.h); PB_TASK_IMAGE=0 when BTF is missing."""
    return _offset_defines(TASK_IMAGE, "PB_TASK_IMAGE", path, use_cache)


def _offset_defines(spec: Spec, flag: str, path: Path, use_cache: bool) -> dict[str, int]:
    """The offsets of ``spec`` and ``flag``=1, or just ``flag``=0 when BTF is missing or
    lacks one of them.

    Cached by the blob's hash: reading a kernel's BTF costs every collector start a second
    of CPU (a tenth of a matrix run's), and the answer changes only with the kernel."""
    try:
        blob = path.read_bytes()
    except OSError:
        return {flag: 0}
    key = hashlib.sha256(blob + repr(spec).encode()).hexdigest()
    return cached(cache_dir("btf") / f"{key}.json", lambda: _offsets(blob, spec, flag),
                  dict, lambda d: {str(k): int(v) for k, v in d.items()},
                  use_cache=use_cache)  # fmt: skip


def _offsets(blob: bytes, spec: Spec, flag: str) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        btf = Btf(blob)
        for name, struct, member in spec:
            off = btf.offset(struct, member)
            if name is not None:
                out[name] = off
            elif off != 0:
                raise CollectorError(f"struct {struct} does not begin with {member}")
    except CollectorError:
        # another kernel's layout: the collector does without (the socket walk falls back
        # to the caller's sockaddr and sock_diag; the event file's header records the flag)
        return {flag: 0}
    out[flag] = 1
    return out
