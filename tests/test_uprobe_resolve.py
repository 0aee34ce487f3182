"""Probe resolution on the real grpc-go targets (three versions), and on binaries it must refuse.

No root needed: only ELF symbols and DWARF are read. Resolution is cached by binary hash
in a per-session directory, so each binary is parsed once here.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from harness.collectors.gobin.elfgo import parse_buildinfo
from harness.collectors.uprobe.discover import find_grpc_go_targets, identify
from harness.collectors.uprobe.resolve import Resolution, resolve
from harness.runner.record import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "scenarios" / "go" / "bin"
VERSIONS = ("v1.33.3", "v1.50.1", "v1.85.0")
RAX, RBX, RCX, RDI, RSI = 0, 3, 2, 5, 4  # DWARF register numbers

pytestmark = [
    pytest.mark.skipif(not (BIN / "grpc-server-v1.85.0").exists(), reason="Go targets not built"),
    pytest.mark.slow,  # DWARF of six 15 MB binaries: about a minute
]


@pytest.fixture(scope="module")
def resolved(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Resolution]:
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    try:
        return {
            (v, role): resolve(BIN / f"grpc-{role}-{v}")
            for v in VERSIONS
            for role in ("server", "client")
        }
    finally:
        mp.undo()


@pytest.mark.parametrize("version", VERSIONS)
def test_every_probe_resolves_on_the_server(
    resolved: dict[tuple[str, str], Resolution], version: str
) -> None:
    r = resolved[(version, "server")]
    assert r.error is None and r.unsupported == []
    assert r.grpc_version == version and r.go
    assert sorted(r.probes) == [
        "client_data", "client_headers", "client_rst", "server_data", "server_headers",
        "server_rst", "write_data", "write_header", "write_rst",
    ]  # fmt: skip
    d = r.defines
    # DESIGN.md: writeHeader's streamID in RBX, hf in RDI/RSI, 40-byte HeaderFields
    assert (d["PB_WH_RECV_REG"], d["PB_WH_SID_REG"], d["PB_WH_END_REG"]) == (RAX, RBX, RCX)
    assert (d["PB_WH_HF_PTR_REG"], d["PB_WH_HF_LEN_REG"]) == (RDI, RSI)
    assert (d["PB_HFIELD_SIZE"], d["PB_HFIELD_NAME"], d["PB_HFIELD_VALUE"]) == (40, 0, 16)
    assert d["PB_HAVE_ADDR"] == 1 and d["PB_TYPE_TCPCONN"] > 0 and d["PB_TYPE_TCPADDR"] > 0
    for p in r.probes.values():
        # past the stack check, inside the function
        assert 0 < p.address - p.symbol_address < 64, p


def test_server_operate_headers_signature_change_is_followed(
    resolved: dict[tuple[str, str], Resolution],
) -> None:
    """v1.85 added a ctx argument before the frame: RBX before, RDI after (RBX,RCX = ctx)."""
    regs = {v: resolved[(v, "server")].defines["PB_SH_FRAME_REG"] for v in VERSIONS}
    assert regs == {"v1.33.3": RBX, "v1.50.1": RBX, "v1.85.0": RDI}


def test_data_shapes_follow_the_version(resolved: dict[tuple[str, str], Resolution]) -> None:
    """Old versions write DATA through x/net's Framer and read *http2.DataFrame; v1.85 has
    its own framer.writeData([][]byte) and parsedDataFrame with a mem.Buffer."""
    shapes = {
        v: (resolved[(v, "server")].defines["PB_WD_SHAPE"],
            resolved[(v, "server")].defines["PB_RD_SHAPE"])
        for v in VERSIONS
    }  # fmt: skip
    assert shapes == {"v1.33.3": (1, 1), "v1.50.1": (1, 1), "v1.85.0": (2, 2)}
    syms = {v: resolved[(v, "server")].probes["write_data"].symbol for v in VERSIONS}
    assert syms["v1.33.3"].endswith("http2.(*Framer).WriteDataPadded")
    assert syms["v1.85.0"].endswith("transport.(*framer).writeData")


def test_a_client_only_binary_says_so_without_unsupported(
    resolved: dict[tuple[str, str], Resolution],
) -> None:
    r = resolved[("v1.33.3", "client")]
    assert r.unsupported == []
    assert {"write_header", "client_headers", "write_data", "client_data"} <= set(r.probes)
    assert "server_headers" not in r.probes
    assert any("server transport" in n for n in r.notes)


def test_cache_round_trip(resolved: dict[tuple[str, str], Resolution]) -> None:
    r = resolved[("v1.85.0", "server")]
    assert Resolution.from_dict(r.to_dict()) == r


def test_non_go_binary_is_refused_cleanly() -> None:
    r = resolve(Path("/bin/ls"), use_cache=False)
    assert not r.go and not r.usable
    assert r.error is not None and "not a Go binary" in r.error
    assert not identify(Path("/bin/ls")).go


def test_go_binary_without_grpc_is_refused_cleanly() -> None:
    path = BIN / "http1-server"
    if not path.exists():
        pytest.skip("http1 Go targets not built")
    r = resolve(path, use_cache=False)
    assert r.go and not r.usable
    assert r.error is not None and "without grpc-go" in r.error
    ident = identify(path)
    assert ident.go and ident.grpc_version is None


def test_identify_reads_a_binary_in_a_few_large_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate holds an exec'd process while identify() looks at its binary: parsed from
    the file, its symbol table cost 87k small reads, each a round trip on a 9p root (a 6.12
    guest held a grpc-go server for 25 minutes). It is read whole, then parsed in memory, as
    is its build info (quick_info: 648 reads)."""
    import io

    path = BIN / "grpc-server-v1.85.0"
    if not path.exists():
        pytest.skip("grpc-go targets not built")
    reads: list[int] = []
    real_open = Path.open

    class Counted(io.BufferedReader):
        def read(self, n: int | None = -1) -> bytes:
            reads.append(1)
            return super().read(n)

    def counted(self: Path, mode: str = "r", *a: object, **k: object) -> object:
        if self == path and mode == "rb":
            return Counted(io.FileIO(str(self), "r"))
        return real_open(self, mode, *a, **k)  # type: ignore[call-overload]

    monkeypatch.setattr(Path, "open", counted)
    ident = identify(path)
    assert ident.go and ident.grpc_version == "v1.85.0"
    assert 0 < len(reads) <= 4, len(reads)  # was 88,000


def test_a_binary_over_the_cap_is_parsed_from_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory stays bounded: a file over IN_MEMORY_MAX is not read whole, and reads the same."""
    from harness.collectors.gobin import elfgo

    path = BIN / "http1-server"
    if not path.exists():
        pytest.skip("http1 Go targets not built")
    whole = identify(path)
    monkeypatch.setattr(elfgo, "IN_MEMORY_MAX", 0)
    with path.open("rb") as f:
        assert elfgo.in_memory(f) is f
    assert identify(path) == whole


def test_missing_file_is_an_error_not_an_exception(tmp_path: Path) -> None:
    r = resolve(tmp_path / "nope", use_cache=False)
    assert r.error is not None and not r.usable


def test_buildinfo_parsing() -> None:
    mod = b"path\tx\nmod\tx\t(devel)\t\ndep\tgoogle.golang.org/grpc\tv1.2.3\th1:abc\n"
    ver = b"go1.22.1"
    data = b"\xff Go buildinf:" + bytes([8, 2]) + b"\0" * 16
    data += bytes([len(ver)]) + ver + bytes([len(mod)]) + mod
    assert parse_buildinfo(data) == (
        "go1.22.1",
        {"x": "(devel)", "google.golang.org/grpc": "v1.2.3"},
    )
    assert parse_buildinfo(b"garbage") == (None, {})


def test_discover_finds_the_go_server_by_its_port() -> None:
    port = free_port()
    srv = subprocess.Popen(
        [str(BIN / "grpc-server-v1.50.1"), "--proto", "grpc", "--host", "127.0.0.1",
         "--port", str(port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert srv.stdout is not None and srv.stdout.readline().startswith("READY")
        # this Python process uses the port too, as a client: it does not qualify
        with socket.create_connection(("127.0.0.1", port)):
            found = find_grpc_go_targets([port])
        assert [(t.pid, t.ports, t.grpc_version) for t in found] == [(srv.pid, [port], "v1.50.1")]
        assert find_grpc_go_targets([free_port()]) == []
    finally:
        srv.terminate()
        srv.wait(timeout=10)
