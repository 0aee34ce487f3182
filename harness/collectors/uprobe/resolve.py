"""Per-binary probe resolution: symbols, argument registers and struct offsets for grpc-go.

Nothing is typed in per version: function addresses come from the ELF symbol table,
argument registers from Go's register ABI applied to the DWARF formal parameters (and
checked against DWARF's own location lists), struct member offsets and runtime type
descriptors from DWARF. A stripped binary (no symbols, no DWARF) is resolved from what
stripping leaves: addresses from Go's function table (.gopclntab), layouts from the
offsets table generated from the DWARF of many grpc-go versions (offsets.py), picked by
the grpc-go version in the build info, in the source paths, or matched by the source
lines of the probed functions; descriptors from the type data. DWARF wins when present.
The result is a set of -D cflags for bpf/uprobe_grpc.c. What cannot be resolved is
listed as ``unsupported: <what>``; the probe that needs it is left out (its coverage is
then 0), never a crash. Results are cached by the binary's hash.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from harness.collectors.gobin import offsets
from harness.collectors.gobin.cache import cache_dir, cached, file_sha256
from harness.collectors.gobin.elfgo import GoBinary, NotGoBinary, quick_info, read_go_binary
from harness.collectors.gobin.pclntab import NoPclntab, read_pclntab

RESOLVER_VERSION = 7

TRANSPORT = "google.golang.org/grpc/internal/transport"
HTTP2 = "golang.org/x/net/http2"
HPACK = "golang.org/x/net/http2/hpack"
XNET_MODULE = "golang.org/x/net"
MEM = "google.golang.org/grpc/mem"
GRPC_MODULE = "google.golang.org/grpc"
CREDS = offsets.CREDS

SYM_WRITE_HEADER = f"{TRANSPORT}.(*loopyWriter).writeHeader"
SYM_CLIENT_HEADERS = f"{TRANSPORT}.(*http2Client).operateHeaders"
SYM_SERVER_HEADERS = f"{TRANSPORT}.(*http2Server).operateHeaders"
SYM_CLIENT_DATA = f"{TRANSPORT}.(*http2Client).handleData"
SYM_SERVER_DATA = f"{TRANSPORT}.(*http2Server).handleData"
SYM_GRPC_WRITE_DATA = f"{TRANSPORT}.(*framer).writeData"  # grpc-go >= 1.6x writes DATA itself
SYM_XNET_WRITE_DATA = f"{HTTP2}.(*Framer).WriteDataPadded"  # WriteData inlines into it
SYM_WRITE_RST = f"{HTTP2}.(*Framer).WriteRSTStream"  # every grpc-go version resets so
SYM_CLIENT_RST = f"{TRANSPORT}.(*http2Client).handleRSTStream"
SYM_SERVER_RST = f"{TRANSPORT}.(*http2Server).handleRSTStream"

FUNCTIONS = (
    SYM_WRITE_HEADER, SYM_CLIENT_HEADERS, SYM_SERVER_HEADERS, SYM_CLIENT_DATA, SYM_SERVER_DATA,
    SYM_GRPC_WRITE_DATA, SYM_XNET_WRITE_DATA, SYM_WRITE_RST, SYM_CLIENT_RST, SYM_SERVER_RST,
)  # fmt: skip
STRUCTS = (
    f"{TRANSPORT}.loopyWriter", f"{TRANSPORT}.framer", f"{TRANSPORT}.bufWriter",
    f"{TRANSPORT}.http2Client", f"{TRANSPORT}.http2Server", f"{TRANSPORT}.parsedDataFrame",
    "net.TCPConn", "net.conn", "net.netFD", "internal/poll.FD", "net.TCPAddr",
    f"{HTTP2}.Framer", f"{HTTP2}.MetaHeadersFrame", f"{HTTP2}.HeadersFrame",
    f"{HTTP2}.FrameHeader", f"{HTTP2}.DataFrame", f"{HTTP2}.RSTStreamFrame",
    f"{HPACK}.HeaderField",
    "internal/abi.ITab", "runtime.itab", f"{MEM}.buffer",
    "crypto/tls.Conn", f"{CREDS}.syscallConn", "runtime.g",
)  # fmt: skip
TYPES = (
    "*net.TCPConn", "*net.TCPAddr", f"*{TRANSPORT}.bufWriter", f"*{MEM}.buffer",
    f"{MEM}.SliceBuffer", "*crypto/tls.Conn", f"*{CREDS}.syscallConn",
)  # fmt: skip

# Go's ABIInternal integer argument registers on amd64, as DWARF register numbers
# (RAX, RBX, RCX, RDI, RSI, R8, R9, R10, R11).
GO_INT_REGS = (0, 3, 2, 5, 4, 8, 9, 10, 11)
GO_FLOAT_REGS = 15

# probe name -> (event probe id in uprobe_events.h, symbol); the BPF function is probe_<name>
PROBES = {
    "write_header": SYM_WRITE_HEADER,
    "client_headers": SYM_CLIENT_HEADERS,
    "server_headers": SYM_SERVER_HEADERS,
    "write_data": None,  # one of two symbols, by shape
    "client_data": SYM_CLIENT_DATA,
    "server_data": SYM_SERVER_DATA,
    "write_rst": SYM_WRITE_RST,
    "client_rst": SYM_CLIENT_RST,
    "server_rst": SYM_SERVER_RST,
}


class Missing(Exception):
    """Something one probe needs is not in the binary; the message names it."""


@dataclass
class ProbePoint:
    symbol: str
    address: int  # virtual address past the prologue: what bcc's attach_uprobe(addr=) takes
    symbol_address: int  # the ELF symbol's value (function entry)


@dataclass
class Resolution:
    """What the collector knows about one binary; JSON-able (event file header, cache)."""

    path: str
    sha256: str
    go: bool
    go_version: str | None = None
    grpc_version: str | None = None
    probes: dict[str, ProbePoint] = field(default_factory=dict)
    defines: dict[str, int] = field(default_factory=dict)
    unsupported: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # why nothing at all can be probed
    # where the layouts came from: "dwarf", "table" (stripped: the offsets table) or "none"
    source: str = "none"
    how: str = ""  # one line: how the versions and layouts were found (for run.json)

    @property
    def usable(self) -> bool:
        return bool(self.probes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Resolution:
        d = dict(d)
        d["probes"] = {k: ProbePoint(**v) for k, v in d.get("probes", {}).items()}
        return cls(**d)


def resolve(path: Path, *, use_cache: bool = True, use_dwarf: bool = True) -> Resolution:
    """Resolve one binary (cached by content hash); never raises for a bad binary.

    ``use_dwarf=False`` resolves as if the binary were stripped (the table's test)."""
    path = Path(path)
    try:
        digest = file_sha256(path)
    except OSError as e:
        return Resolution(str(path), "", go=False, error=f"cannot read {path}: {e.strerror}")
    # the offsets table is an input too: a regenerated table must not meet old answers
    entry = cache_dir("uprobe") / (
        f"{digest[:32]}-v{RESOLVER_VERSION}-{offsets.table_digest()}.json")
    r = cached(entry, lambda: _resolve(path, digest, use_dwarf), Resolution.to_dict,
               Resolution.from_dict, use_cache=use_cache and use_dwarf)  # fmt: skip
    r.path = str(path)
    return r


def _links_grpc(path: Path) -> bool | None:
    """Does the function table name grpc-go's transport? (None: no table to tell.) Cheap,
    and spares a Go binary without grpc-go the DWARF walk."""
    try:
        with path.open("rb") as f:
            sec = ELFFile(f).get_section_by_name(".gopclntab")
            return None if sec is None else f"{TRANSPORT}.(".encode() in sec.data()
    except (ELFError, OSError):
        return None


def _resolve(path: Path, digest: str, use_dwarf: bool = True) -> Resolution:
    try:
        version, modules = quick_info(path)
    except NotGoBinary as e:
        return Resolution(str(path), digest, go=False, error=f"{path}: {e}")
    except OSError as e:
        return Resolution(str(path), digest, go=False, error=f"cannot read {path}: {e.strerror}")
    if GRPC_MODULE not in modules and _links_grpc(path) is False:
        return Resolution(str(path), digest, go=True, go_version=version,
                          error=f"{path}: a Go binary without grpc-go ({GRPC_MODULE} not "
                          "linked in)")  # fmt: skip
    try:
        gb = read_go_binary(
            path,
            symbol_names=FUNCTIONS,
            struct_names=STRUCTS if use_dwarf else (),
            type_names=TYPES if use_dwarf else (),
            function_names=FUNCTIONS if use_dwarf else (),
        )
    except NotGoBinary as e:
        return Resolution(str(path), digest, go=False, error=f"{path}: {e}")
    r = Resolution(str(path), digest, go=True, go_version=gb.go_version,
                   grpc_version=gb.modules.get(GRPC_MODULE))  # fmt: skip
    has_dwarf = bool(gb.structs) and any(f in gb.functions for f in FUNCTIONS)
    if not use_dwarf:
        gb.symbols = {}
    if has_dwarf:
        r.source, r.how = "dwarf", "DWARF"
        _fill_symbols(path, gb)
        if r.grpc_version is None and not any(s in gb.symbols for s in FUNCTIONS[:5]):
            r.error = f"{path}: a Go binary without grpc-go ({GRPC_MODULE} not linked in)"
            r.source = "none"
            return r
        _Resolver(gb, r).run()
    else:
        tgb = _from_table(path, gb, r)
        if tgb is None:
            r.source = "none"
            return r
        r.source = "table"
        _Resolver(tgb, r).run()
    if not r.probes and r.error is None:
        r.error = f"{path}: no grpc-go probe point could be resolved"
    return r


def _fill_symbols(path: Path, gb: GoBinary) -> None:
    """Function entries a binary without a symbol table (-s, DWARF kept) still has."""
    if all(f in gb.symbols for f in gb.functions):
        return
    try:
        with path.open("rb") as f:
            pt = read_pclntab(ELFFile(f), set(FUNCTIONS))
    except (NoPclntab, ELFError, OSError):
        return
    for name, fi in pt.functions.items():
        gb.symbols.setdefault(name, fi.entry)


def _from_table(path: Path, gb: GoBinary, r: Resolution) -> GoBinary | None:
    """A stripped binary: what DWARF would have said, from pclntab and the offsets table.
    Sets r.error (and returns None) when the binary cannot be probed, saying why."""
    table = offsets.load_table()
    try:
        with path.open("rb") as f:
            elf = ELFFile(f)
            try:
                pt = read_pclntab(elf, set(FUNCTIONS) | set(offsets.XNET_FINGERPRINT))
            except NoPclntab as e:
                r.error = (f"{path}: stripped (no DWARF) and its Go function table is "
                           f"unreadable ({e}): not probed")  # fmt: skip
                return None
            grpc_funcs = [n for n in FUNCTIONS if offsets.part_of(n) == "grpc"]
            if not any(n in pt.functions for n in grpc_funcs):
                r.error = f"{path}: a Go binary without grpc-go (no grpc-go transport functions)"
                return None
            version, how = r.grpc_version, "build info"
            if version is None:
                version = pt.source_version(GRPC_MODULE, grpc_funcs)
                how = "source paths"
            if version is None:
                hits, why = offsets.identify_by_fingerprint(
                    table, offsets.fingerprint(pt, FUNCTIONS)
                )
                if not hits:
                    r.error = (f"{path}: stripped grpc-go of unknown version ({why}): "
                               "not probed")  # fmt: skip
                    return None
                if not offsets.same_layout(table, hits):
                    r.error = (
                        f"{path}: stripped grpc-go whose source lines match "
                        f"{', '.join(hits)}, which differ in layout: not probed"
                    )
                    return None
                version = hits[0] if len(hits) == 1 else f"{hits[0]}..{hits[-1]}"
                how = "fingerprint (source lines of the probed functions)"
                r.grpc_version = version
                entry = table["grpc"][hits[0]]
            else:
                r.grpc_version = version
                entry = table["grpc"].get(version)
                if entry is None:
                    known = sorted(table["grpc"], key=offsets.version_key)
                    span = f"{known[0]} to {known[-1]}" if known else "empty"
                    r.error = (
                        f"{path}: stripped grpc-go {version} is not in the offsets "
                        f"table ({len(known)} versions, {span}): not probed"
                    )
                    return None
            parts = {"grpc": entry}
            xnet, xwhy = offsets.pick_xnet(table, gb.modules.get(XNET_MODULE), pt, FUNCTIONS)
            gov, gwhy = offsets.pick(table, "go", offsets.go_minor(gb.go_version), "Go")
            for part, got, why in (("xnet", xnet, xwhy), ("go", gov, gwhy)):
                if got is None:
                    r.error = f"{path}: stripped grpc-go {version}: {why}: not probed"
                    return None
                if why:
                    r.notes.append(why)
                parts[part] = got
            tgb = offsets.synthesize(path, elf, pt, parts, gb.go_version, gb.modules, TYPES)
    except (ELFError, OSError) as e:
        r.error = f"{path}: cannot read it ({e})"
        return None
    r.how = f"offsets table: grpc-go {version} from {how}"
    r.notes.append(f"stripped: {r.how}")
    return tgb


class _Resolver:
    def __init__(self, gb: GoBinary, r: Resolution) -> None:
        self.gb, self.r = gb, r
        self.d: dict[str, int] = {}

    # -- lookups that raise Missing ------------------------------------------------------

    def off(self, struct: str, *members: str) -> int:
        """Offset of a (possibly nested, through embedded structs) member."""
        total, cur = 0, struct
        for m in members:
            s = self.gb.structs.get(cur)
            if s is None:
                raise Missing(f"struct {cur}")
            mem = s.members.get(m)
            if mem is None:
                raise Missing(f"member {cur}.{m}")
            total += mem.offset
            cur = mem.type_name
        return total

    def member_type(self, struct: str, member: str) -> str:
        s = self.gb.structs.get(struct)
        if s is None or member not in s.members:
            raise Missing(f"member {struct}.{member}")
        return s.members[member].type_name

    def symbol(self, name: str) -> int:
        if name not in self.gb.symbols:
            raise Missing(f"symbol {name}")
        return self.gb.symbols[name]

    def point(self, sym: str) -> ProbePoint:
        """Where to attach: past the prologue (see elfgo._function), in the symbol's code."""
        addr = self.symbol(sym)
        fn = self.gb.functions.get(sym)
        if fn is None:
            raise Missing(f"DWARF subprogram {sym}")
        if fn.low_pc != addr:
            raise Missing(f"agreement of ELF and DWARF on {sym}'s address")
        return ProbePoint(sym, fn.probe_pc, addr)

    def rtype(self, name: str) -> int:
        if self.gb.elf_type != "ET_EXEC":
            return 0  # PIE: descriptors move with the load address; checks are off (noted)
        addr = self.gb.runtime_type(name)
        if addr is None:
            raise Missing(f"runtime type {name}")
        return addr

    def regs(self, func: str, param: str, type_prefix: str | None = None) -> list[int]:
        """DWARF register numbers holding an input parameter at the function's entry."""
        fn = self.gb.functions.get(func)
        if fn is None:
            raise Missing(f"DWARF subprogram {func}")
        ints, floats = 0, 0
        for p in fn.params:
            if p.output:
                continue
            fits = p.words is not None and ints + p.words <= len(GO_INT_REGS) and (
                floats + p.floats <= GO_FLOAT_REGS)  # fmt: skip
            assigned = list(GO_INT_REGS[ints : ints + p.words]) if fits and p.words else []
            if fits:
                ints, floats = ints + (p.words or 0), floats + p.floats
            if p.name != param:
                continue
            if type_prefix is not None and not p.type_name.startswith(type_prefix):
                raise Missing(f"parameter {func} {param} of type {type_prefix} (is {p.type_name})")
            if not assigned:
                raise Missing(f"register-assigned parameter {func} {param}")
            if p.entry_regs is not None and p.entry_regs[: len(assigned)] != assigned:
                raise Missing(
                    f"agreement of ABI and DWARF on {func} {param} "
                    f"(ABI {assigned}, DWARF {p.entry_regs})"
                )
            return assigned
        raise Missing(f"parameter {func} {param}")

    # -- the parts -----------------------------------------------------------------------

    def run(self) -> None:
        d = self.d
        try:
            self.addresses()
            d["PB_HAVE_ADDR"] = 1
            self.tls_wrappers()
        except Missing as e:
            self.r.unsupported.append(f"unsupported: {e} (connection addresses)")
            d["PB_HAVE_ADDR"] = 0
        if self.gb.elf_type != "ET_EXEC":
            self.r.notes.append("position-independent binary: dynamic type checks are off")
        d["PB_CHECK_TYPES"] = int(self.gb.elf_type == "ET_EXEC")
        if self.gb.elf_type == "ET_EXEC":
            self.read_only_segment()
        try:  # the probes' goroutine ids, for the connection cache (uprobe_grpc.c conn_at)
            d["PB_G_GOID"] = self.off("runtime.g", "goid")
        except Missing as e:
            self.r.notes.append(f"connections not cached per goroutine ({e})")
        for name, fn in (
            ("header_fields", self.header_fields),
            ("write_header", self.write_header),
            ("client_headers", lambda: self.recv_headers("client_headers", SYM_CLIENT_HEADERS,
                                                         f"{TRANSPORT}.http2Client", "CH")),
            ("server_headers", lambda: self.recv_headers("server_headers", SYM_SERVER_HEADERS,
                                                         f"{TRANSPORT}.http2Server", "SH")),
            ("write_data", self.write_data),
            ("client_data", lambda: self.recv_data("client_data", SYM_CLIENT_DATA,
                                                   f"{TRANSPORT}.http2Client", "CD")),
            ("server_data", lambda: self.recv_data("server_data", SYM_SERVER_DATA,
                                                   f"{TRANSPORT}.http2Server", "SD")),
            ("write_rst", self.write_rst),
            ("client_rst", lambda: self.recv_rst("client_rst", SYM_CLIENT_RST,
                                                 f"{TRANSPORT}.http2Client", "CR")),
            ("server_rst", lambda: self.recv_rst("server_rst", SYM_SERVER_RST,
                                                 f"{TRANSPORT}.http2Server", "SR")),
        ):  # fmt: skip
            side = "server" if name.startswith("server_") else "client"
            if name.startswith(side) and not self.side_linked(side):
                continue  # reported once below, not as unsupported
            saved = dict(d)
            try:
                fn()
            except Missing as e:
                self.d = d = saved  # nothing half-resolved reaches the program
                self.r.unsupported.append(f"unsupported: {e}")
                self.r.probes.pop(name, None)
                if name == "header_fields":
                    self.r.notes.append("header probes need hpack.HeaderField: left out")
        for side in ("client", "server"):
            if not self.side_linked(side):
                self.r.notes.append(f"no grpc-go {side} transport linked in: {side} probes skipped")
        if "PB_HFIELD_SIZE" not in d:
            for p in ("write_header", "client_headers", "server_headers"):
                self.r.probes.pop(p, None)
        for p in PROBES:
            d[f"PB_HAVE_{p.upper()}"] = int(p in self.r.probes)
        self.r.defines = dict(sorted(d.items()))

    def read_only_segment(self) -> None:
        """Where the binary's read-only data lies once loaded (a fixed address: not a PIE).
        The header probes send a string found there once and name it by address after
        (pb_hfield); none is named that way when .rodata is in no read-only segment."""
        try:
            with self.gb.path.open("rb") as f:
                elf = ELFFile(f)
                sec = elf.get_section_by_name(".rodata")
                segs = [s.header for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        except (ELFError, OSError) as e:
            self.r.notes.append(f"read-only data not located ({e}): header strings read each time")
            return
        addr = sec["sh_addr"] if sec is not None else None
        for h in segs:
            if addr is not None and h.p_vaddr <= addr < h.p_vaddr + h.p_filesz:
                if not h.p_flags & 2:  # PF_W
                    self.d["PB_RO_LO"], self.d["PB_RO_HI"] = h.p_vaddr, h.p_vaddr + h.p_filesz
                return

    def side_linked(self, side: str) -> bool:
        """A client-only binary has no http2Server code at all (and vice versa)."""
        syms = (SYM_SERVER_HEADERS, SYM_SERVER_DATA) if side == "server" else (
            SYM_CLIENT_HEADERS, SYM_CLIENT_DATA)  # fmt: skip
        return any(s in self.gb.symbols or s in self.gb.functions for s in syms)

    def addresses(self) -> None:
        d = self.d
        itab = "internal/abi.ITab" if "internal/abi.ITab" in self.gb.structs else "runtime.itab"
        d["PB_ITAB_TYPE"] = self.off(itab, "Type" if itab.startswith("internal") else "_type")
        d["PB_TYPE_TCPCONN"] = self.rtype("*net.TCPConn")
        d["PB_TYPE_TCPADDR"] = self.rtype("*net.TCPAddr")
        d["PB_TCPCONN_FD"] = self.off("net.TCPConn", "conn", "fd")
        d["PB_NETFD_SYSFD"] = self.off("net.netFD", "pfd", "Sysfd")
        d["PB_NETFD_LADDR"] = self.off("net.netFD", "laddr")
        d["PB_NETFD_RADDR"] = self.off("net.netFD", "raddr")
        d["PB_TCPADDR_IP"] = self.off("net.TCPAddr", "IP")
        d["PB_TCPADDR_PORT"] = self.off("net.TCPAddr", "Port")

    def tls_wrappers(self) -> None:
        """grpc-go's TLS credentials hand the transport a *syscallConn (the *tls.Conn beside
        the raw socket as a syscall.Conn), or a bare *tls.Conn when the raw conn is no
        syscall.Conn: one hop from either reaches the *net.TCPConn. Each hop needs the
        wrapper's type descriptor (a PIE has none to compare): without it, that wrapper's
        calls stay `no_peer_address`, noted."""
        for key, typ, struct, member in (
            ("SYSCONN", f"*{CREDS}.syscallConn", f"{CREDS}.syscallConn", "sysConn"),
            ("TLSCONN", "*crypto/tls.Conn", "crypto/tls.Conn", "conn"),
        ):
            try:
                off, t = self.off(struct, member), self.rtype(typ)
            except Missing as e:
                self.r.notes.append(f"{typ} not followed to its socket ({e})")
                continue
            if not t:
                self.r.notes.append(f"{typ} not followed to its socket (no type checks)")
                continue
            self.d[f"PB_TYPE_{key}"], self.d[f"PB_{key}_INNER"] = t, off

    def header_fields(self) -> None:
        hf = f"{HPACK}.HeaderField"
        s = self.gb.structs.get(hf)
        if s is None:
            raise Missing(f"struct {hf}")
        self.d["PB_HFIELD_SIZE"] = s.size
        self.d["PB_HFIELD_NAME"] = self.off(hf, "Name")
        self.d["PB_HFIELD_VALUE"] = self.off(hf, "Value")
        self.d["PB_FH_FLAGS"] = self.off(f"{HTTP2}.FrameHeader", "Flags")
        self.d["PB_FH_SID"] = self.off(f"{HTTP2}.FrameHeader", "StreamID")

    def conn_path(self, prefix: str, steps: list[tuple[int, int]], conn_off: int) -> None:
        """Pointer hops from the probe's root object to the net.Conn interface.

        Each step reads a pointer at an offset; a step with a type reads an interface's
        data word and first checks its dynamic type."""
        if len(steps) > 2:
            raise Missing(f"a conn path of at most 2 hops for {prefix}")
        for i in range(2):
            off, typ = steps[i] if i < len(steps) else (-1, 0)
            self.d[f"PB_{prefix}_S{i}"] = off
            self.d[f"PB_{prefix}_T{i}"] = typ
        self.d[f"PB_{prefix}_CONN"] = conn_off

    def write_header(self) -> None:
        lw = f"{TRANSPORT}.loopyWriter"
        d = self.d
        d["PB_WH_RECV_REG"] = self.regs(SYM_WRITE_HEADER, "l")[0]
        d["PB_WH_SID_REG"] = self.regs(SYM_WRITE_HEADER, "streamID")[0]
        d["PB_WH_END_REG"] = self.regs(SYM_WRITE_HEADER, "endStream")[0]
        hf = self.regs(SYM_WRITE_HEADER, "hf", f"[]{HPACK}.HeaderField")
        d["PB_WH_HF_PTR_REG"], d["PB_WH_HF_LEN_REG"] = hf[0], hf[1]
        s = self.gb.structs.get(lw)
        if s is not None and "conn" in s.members:
            self.conn_path("WH", [], self.off(lw, "conn"))
        else:
            bw = f"{TRANSPORT}.bufWriter"
            self.conn_path(
                "WH",
                [(self.off(lw, "framer"), 0), (self.off(f"{TRANSPORT}.framer", "writer"), 0)],
                self.off(bw, "conn"),
            )
        self.r.probes["write_header"] = self.point(SYM_WRITE_HEADER)

    def recv_headers(self, name: str, sym: str, transport: str, prefix: str) -> None:
        d = self.d
        d[f"PB_{prefix}_RECV_REG"] = self.regs(sym, "t")[0]
        d[f"PB_{prefix}_FRAME_REG"] = self.regs(sym, "frame", f"*{HTTP2}.MetaHeadersFrame")[0]
        d["PB_MHF_HEADERS"] = self.off(f"{HTTP2}.MetaHeadersFrame", "HeadersFrame")
        d["PB_MHF_FIELDS"] = self.off(f"{HTTP2}.MetaHeadersFrame", "Fields")
        d["PB_HDRF_FH"] = self.off(f"{HTTP2}.HeadersFrame", "FrameHeader")
        self.conn_path(prefix, [], self.off(transport, "conn"))
        self.r.probes[name] = self.point(sym)

    def write_data(self) -> None:
        d = self.d
        bw = f"{TRANSPORT}.bufWriter"
        if SYM_GRPC_WRITE_DATA in self.gb.functions and SYM_GRPC_WRITE_DATA in self.gb.symbols:
            sym, shape = SYM_GRPC_WRITE_DATA, 2
            data = self.regs(sym, "data", "[][]uint8")
            self.conn_path("WD", [(self.off(f"{TRANSPORT}.framer", "writer"), 0)],
                           self.off(bw, "conn"))  # fmt: skip
        else:
            sym, shape = SYM_XNET_WRITE_DATA, 1
            data = self.regs(sym, "data", "[]uint8")
            # Framer.w is an io.Writer: only grpc-go's bufWriter leads to a grpc connection
            w = self.off(f"{HTTP2}.Framer", "w")
            self.conn_path("WD", [(w + 8, self.rtype(f"*{bw}"))], self.off(bw, "conn"))
        d["PB_WD_SHAPE"] = shape
        d["PB_WD_RECV_REG"] = self.regs(sym, "f")[0]
        d["PB_WD_SID_REG"] = self.regs(sym, "streamID")[0]
        d["PB_WD_END_REG"] = self.regs(sym, "endStream")[0]
        d["PB_WD_DATA_PTR_REG"], d["PB_WD_DATA_LEN_REG"] = data[0], data[1]
        self.r.probes["write_data"] = self.point(sym)

    def recv_data(self, name: str, sym: str, transport: str, prefix: str) -> None:
        d = self.d
        fn = self.gb.functions.get(sym)
        if fn is None:
            raise Missing(f"DWARF subprogram {sym}")
        ftype = next((p.type_name for p in fn.params if p.name == "f"), "")
        if ftype == f"*{HTTP2}.DataFrame":
            shape, frame = 1, f"{HTTP2}.DataFrame"
        elif ftype == f"*{TRANSPORT}.parsedDataFrame":
            shape, frame = 2, f"{TRANSPORT}.parsedDataFrame"
            d["PB_TYPE_SLICEBUF"] = self.rtype(f"{MEM}.SliceBuffer")
            d["PB_TYPE_MEMBUF"] = self.rtype(f"*{MEM}.buffer")
            d["PB_MEMBUF_DATA"] = self.off(f"{MEM}.buffer", "data")
        else:
            raise Missing(f"a known DATA frame type for {sym} (is {ftype or 'absent'})")
        if d.get("PB_RD_SHAPE", shape) != shape:
            raise Missing(f"one DATA frame type for both sides ({sym})")
        d["PB_RD_SHAPE"] = shape
        d["PB_FH_FLAGS"] = self.off(f"{HTTP2}.FrameHeader", "Flags")
        d["PB_FH_SID"] = self.off(f"{HTTP2}.FrameHeader", "StreamID")
        d["PB_DF_FH"] = self.off(frame, "FrameHeader")
        d["PB_DF_DATA"] = self.off(frame, "data")
        d[f"PB_{prefix}_RECV_REG"] = self.regs(sym, "t")[0]
        d[f"PB_{prefix}_FRAME_REG"] = self.regs(sym, "f")[0]
        self.conn_path(prefix, [], self.off(transport, "conn"))
        self.r.probes[name] = self.point(sym)

    def write_rst(self) -> None:
        d = self.d
        bw = f"{TRANSPORT}.bufWriter"
        # Framer.w is an io.Writer: only grpc-go's bufWriter leads to a grpc connection
        w = self.off(f"{HTTP2}.Framer", "w")
        self.conn_path("WR", [(w + 8, self.rtype(f"*{bw}"))], self.off(bw, "conn"))
        d["PB_WR_RECV_REG"] = self.regs(SYM_WRITE_RST, "f")[0]
        d["PB_WR_SID_REG"] = self.regs(SYM_WRITE_RST, "streamID")[0]
        d["PB_WR_CODE_REG"] = self.regs(SYM_WRITE_RST, "code")[0]
        self.r.probes["write_rst"] = self.point(SYM_WRITE_RST)

    def recv_rst(self, name: str, sym: str, transport: str, prefix: str) -> None:
        d = self.d
        frame = f"{HTTP2}.RSTStreamFrame"
        d[f"PB_{prefix}_RECV_REG"] = self.regs(sym, "t")[0]
        d[f"PB_{prefix}_FRAME_REG"] = self.regs(sym, "f", f"*{frame}")[0]
        d["PB_FH_SID"] = self.off(f"{HTTP2}.FrameHeader", "StreamID")
        d["PB_RSTF_FH"] = self.off(frame, "FrameHeader")
        d["PB_RSTF_CODE"] = self.off(frame, "ErrCode")
        self.conn_path(prefix, [], self.off(transport, "conn"))
        self.r.probes[name] = self.point(sym)
