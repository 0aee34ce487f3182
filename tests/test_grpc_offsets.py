"""Stripped grpc-go binaries: the generated offsets table against DWARF, and honest refusals.

The checked-in table (harness/collectors/gobin/grpc_offsets.json, made by
scripts/gen-grpc-offsets) must give, for every grpc-go target the project builds, exactly
what DWARF gives: the same -D defines (registers, offsets, type descriptors) and the same
probe addresses. The stripped builds (-ldflags="-s -w") of those targets must resolve from
the table alone, and a binary the table cannot describe must be refused with its reason.
No root needed: only files are read.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from harness.collectors.gobin import offsets
from harness.collectors.gobin.pclntab import read_pclntab
from harness.collectors.tls.gotls import resolve_go_tls
from harness.collectors.uprobe.discover import identify
from harness.collectors.uprobe.resolve import FUNCTIONS, Resolution, resolve

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "scenarios" / "go" / "bin"
VERSIONS = ("v1.33.3", "v1.50.1", "v1.85.0")
DEBIAN = BIN / "grpc-health-debian"  # GOPATH build, Go 1.19 (scripts/build-grpc-targets)

pytestmark = pytest.mark.skipif(
    not (BIN / "grpc-server-v1.85.0-stripped").exists(), reason="Go targets not built"
)


def _targets() -> list[Path]:
    ts = [BIN / f"grpc-{role}-{v}" for v in VERSIONS for role in ("server", "client")]
    return ts + ([DEBIAN] if DEBIAN.exists() else [])


@pytest.fixture(scope="module")
def dwarf() -> dict[Path, Resolution]:
    """DWARF resolutions (cached by binary hash across the suite, as the collector does)."""
    return {b: resolve(b) for b in _targets()}


def test_table_covers_ten_minor_versions() -> None:
    table = offsets.load_table()
    minors = {offsets.version_key(v)[:2] for v in table["grpc"]}
    assert len([m for m in minors if m >= (1, 33)]) >= 10, sorted(minors)
    assert {"v1.33.3", "v1.50.1", "v1.85.0"} <= set(table["grpc"])
    assert "go1.26" in table["go"]
    for e in table["grpc"].values():  # every entry can be fingerprinted and probed
        assert len(e["fingerprint"]) >= 3 and len(e["functions"]) >= 4


@pytest.mark.slow
@pytest.mark.parametrize("binary", _targets(), ids=lambda p: p.name)
def test_table_agrees_with_dwarf(dwarf: dict[Path, Resolution], binary: Path) -> None:
    """Resolved as if stripped (pclntab + table + type data) == resolved from DWARF."""
    d = dwarf[binary]
    t = resolve(binary, use_dwarf=False)
    assert d.source == "dwarf" and t.source == "table", (d.how, t.how, t.error)
    assert d.error is None and d.unsupported == []
    assert t.error is None and t.unsupported == [], (t.error, t.unsupported)
    assert t.defines == d.defines
    assert t.probes == d.probes
    assert t.grpc_version == d.grpc_version or binary == DEBIAN


@pytest.mark.parametrize("version", VERSIONS)
def test_stripped_target_resolves_from_the_table(version: str) -> None:
    for role in ("server", "client"):
        b = BIN / f"grpc-{role}-{version}-stripped"
        with b.open("rb") as f:
            elf = ELFFile(f)
            assert elf.get_section_by_name(".symtab") is None and not elf.has_dwarf_info()
        assert identify(b).grpc_version == version
        r = resolve(b, use_cache=False)
        assert r.source == "table" and r.error is None and r.unsupported == [], r.error
        assert r.grpc_version == version and "from build info" in r.how
        assert r.defines["PB_HAVE_ADDR"] == 1 and r.defines["PB_TYPE_TCPCONN"] > 0
        # over TLS the walk follows grpc-go's wrapper and *tls.Conn to the socket
        assert r.defines["PB_TYPE_SYSCONN"] > 0 and r.defines["PB_TYPE_TLSCONN"] > 0
        assert r.defines["PB_SYSCONN_INNER"] == 16 and r.defines["PB_TLSCONN_INNER"] == 0
        assert {"write_header", "write_data", "write_rst", f"{role}_rst"} <= set(r.probes)


def test_pclntab_entries_match_the_symbol_table() -> None:
    """Function entries and source lines from .gopclntab, Go 1.26 and (Debian) Go 1.19."""
    for b in [BIN / "grpc-server-v1.33.3", *([DEBIAN] if DEBIAN.exists() else [])]:
        with b.open("rb") as f:
            elf = ELFFile(f)
            pt = read_pclntab(elf, set(FUNCTIONS))
            symtab = elf.get_section_by_name(".symtab")
            syms = {s.name: s["st_value"] for s in symtab.iter_symbols()}
        assert pt.functions, b
        for name, fi in pt.functions.items():
            assert fi.entry == syms[name], name
            assert fi.file.endswith(".go") and fi.line > 0


@pytest.mark.skipif(not DEBIAN.exists(), reason="Debian Go 1.19 / grpc-go sources not installed")
def test_gopath_build_is_identified_by_fingerprint() -> None:
    """No module versions in the build info, no version in the source paths: the source
    lines of the probed functions name grpc-go v1.33.3 (and x/net)."""
    b = BIN / "grpc-health-debian-stripped"
    out = subprocess.run(["/usr/local/go/bin/go", "version", "-m", str(b)], capture_output=True,
                         text=True, check=False).stdout  # fmt: skip
    assert "command-line-arguments" in out and "google.golang.org/grpc" not in out
    assert identify(b).grpc_version == "linked"
    r = resolve(b, use_cache=False)
    assert r.source == "table" and r.error is None and r.unsupported == [], (r.error, r.notes)
    assert r.grpc_version == "v1.33.3" and "fingerprint" in r.how
    assert r.go_version is not None and r.go_version.startswith("go1.19")
    assert {"server_headers", "server_data", "write_header", "write_data", "server_rst",
            "write_rst"} <= set(r.probes)


def test_version_not_in_the_table_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """No guessed offsets: a stripped v1.50.1 with v1.50.1 taken out of the table is refused,
    whatever its neighbours say."""
    table = copy.deepcopy(offsets.load_table())
    del table["grpc"]["v1.50.1"]
    monkeypatch.setattr(offsets, "load_table", lambda: table)
    r = resolve(BIN / "grpc-server-v1.50.1-stripped", use_cache=False)
    assert r.source == "none" and not r.probes and r.defines == {}
    assert r.error is not None and "v1.50.1 is not in the offsets table" in r.error


def test_unknown_fingerprint_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    table = copy.deepcopy(offsets.load_table())
    for e in table["grpc"].values():
        e["fingerprint"] = {n: [f, line + 1] for n, (f, line) in e["fingerprint"].items()}
    monkeypatch.setattr(offsets, "load_table", lambda: table)
    if not DEBIAN.exists():
        pytest.skip("Debian GOPATH target not built")
    r = resolve(BIN / "grpc-health-debian-stripped", use_cache=False)
    assert not r.probes and r.error is not None
    assert "unknown version" in r.error and "no grpc-go version in the table" in r.error


@pytest.mark.skipif(shutil.which("objcopy") is None, reason="objcopy not installed")
def test_reasons_for_binaries_not_probed(tmp_path: Path) -> None:
    """Not Go; Go without grpc-go; stripped with no function table."""
    r = resolve(Path("/bin/true"), use_cache=False)
    assert not r.go and r.error is not None and "not a Go binary" in r.error
    assert "not a Go binary" in identify(Path("/bin/true")).why
    plain = BIN / "http1-server"
    assert "without grpc-go" in identify(plain).why
    r = resolve(plain, use_cache=False)
    assert r.go and not r.probes and "without grpc-go" in (r.error or "")
    blind = tmp_path / "grpc-server-no-pclntab"
    subprocess.run(["objcopy", "--remove-section", ".gopclntab",
                    str(BIN / "grpc-server-v1.85.0-stripped"), str(blind)], check=True)  # fmt: skip
    r = resolve(blind, use_cache=False)
    assert r.source == "none" and not r.probes
    assert re.search(r"stripped \(no DWARF\) and its Go function table is unreadable",
                     r.error or "")  # fmt: skip


@pytest.mark.bpf
@pytest.mark.parametrize(("version", "mode"), [("v1.33.3", "unary"), ("v1.85.0", "bidi")])
def test_stripped_targets_are_observed_completely(tmp_path: Path, version: str, mode: str) -> None:
    """Real uprobes on stripped builds, placed from the table: every call of the workload,
    from both sides, with no field degraded."""
    from uprobe_run import assert_both_sides_match, client_args, recording, run_client

    from harness.collectors.uprobe.exchanges import uprobe_exchanges
    from harness.runner.record import free_port

    build = f"{version}-stripped"
    port = free_port()
    events, workload = tmp_path / "uprobe.bin", tmp_path / "workload.jsonl"
    with recording(events, build, port) as stats:
        run_client(client_args(build, port, mode, 30, workload))
    assert {b["source"] for b in stats["binaries"].values()} == {"table"}
    xs, _ = uprobe_exchanges(events, [port])
    assert_both_sides_match(xs, workload, 30)


@pytest.mark.parametrize("version", VERSIONS)
def test_stripped_go_tls_resolves_as_dwarf_does(version: str) -> None:
    """The Go crypto/tls probes on a stripped build: the same entries, RET instructions and
    layouts (from pclntab, a disassembly and the table's Go part) as DWARF gives."""
    whole = resolve_go_tls(BIN / f"grpc-server-{version}", use_cache=False)
    bare = resolve_go_tls(BIN / f"grpc-server-{version}-stripped", use_cache=False)
    assert (whole.source, whole.error, bare.source, bare.error) == ("dwarf", None, "table", None)
    assert len(bare.read_rets) >= 2
    assert (bare.write, bare.read, bare.read_rets, bare.defines) == (
        whole.write, whole.read, whole.read_rets, whole.defines,
    )  # fmt: skip
    assert bare.read_args_spilled and bare.defines["PB_GO_READ_SPILLED"] == 1


def test_stripped_go_tls_without_a_layout_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    table = copy.deepcopy(offsets.load_table())
    for entry in table["go"].values():
        entry["structs"].pop("crypto/tls.Conn", None)
    monkeypatch.setattr(offsets, "load_table", lambda: table)
    r = resolve_go_tls(BIN / "grpc-server-v1.85.0-stripped", use_cache=False)
    assert r.source == "none" and r.defines == {} and r.read_rets == []
    assert r.error is not None and "no crypto/tls layout" in r.error
