"""The scenario table: names, protocols, and the target commands that drive them."""

from __future__ import annotations

import importlib.metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ProbebenchError
from harness.model import repo_root

SCEN_DIR = repo_root() / "scenarios"
GO_BIN = SCEN_DIR / "go" / "bin"
GRPC_GO_VERSIONS = ("v1.33.3", "v1.50.1", "v1.85.0")
CURRENT_GRPC_GO = GRPC_GO_VERSIONS[-1]
# The same targets built with -ldflags="-s -w" (no symbols, no DWARF), as services ship:
# `--grpc-go v1.33.3-stripped` runs them (scripts/build-grpc-targets builds both).
STRIPPED = "-stripped"
GRPC_GO_BUILDS = GRPC_GO_VERSIONS + tuple(v + STRIPPED for v in GRPC_GO_VERSIONS)
OBSERVE = "observe"  # the scenario name of runs whose workload a user brought
NODE_DIR = SCEN_DIR / "node"
JAVA_DIR = SCEN_DIR / "java"
RUST_BIN = SCEN_DIR / "rust" / "bin"
# Languages of the targets (--client/--server), and the protocols each one speaks.
LANGS = ("py", "go", "node", "java", "rust")
# h2c: plain HTTP/2 with prior knowledge, Go net/http's own and Node's built-in http2.
LANG_PROTOS = {"py": {"http10", "http11", "grpc"}, "go": {"http10", "http11", "grpc", "h2c"},
               "node": {"grpc", "h2c"}, "java": {"grpc"}, "rust": {"grpc"}}  # fmt: skip
# Why the uprobe collector (grpc-go's own functions) cannot see a target of a language: the
# report's multi-language column states the reason per stack, not just 0%.
UPROBE_GAP = {
    "py": "grpcio's C core is linked into a module that exports no symbols",
    "node": "grpc-js is JavaScript run by V8's JIT over Node's own HTTP/2; no grpc-go to probe",
    "java": "grpc-java is JVM bytecode compiled by the JIT (Netty's HTTP/2); no symbols to probe",
    "rust": "tonic and h2 are native code with symbols, but no probe is written for them",
}
# The same for plain HTTP/2 (h2c-plain): neither stack links grpc-go.
H2C_UPROBE_GAP = {
    "go": "Go net/http's own HTTP/2 (its bundled x/net/http2), not grpc-go: the library the "
          "probes hook is not linked",
    "node": "Node's built-in http2 (nghttp2 inside the node binary, driven from JavaScript): "
            "no grpc-go to probe",
}


def uprobe_gap(s: Scenario, lang: str) -> str | None:
    """Why the uprobe collector cannot see this scenario's target of this language, if known
    beforehand (the run measures it all the same)."""
    if s.proto == "h2c":
        return H2C_UPROBE_GAP.get(lang)
    if not s.is_grpc:
        return "HTTP/1: the probes hook grpc-go's HTTP/2 transport only"
    return UPROBE_GAP.get(lang)


@dataclass(frozen=True)
class Scenario:
    name: str
    proto: str  # the targets' --proto
    protocol: str  # Exchange.protocol the truth should show
    mode: str | None = None  # gRPC call mode
    connections: int = 4
    default_exchanges: int = 2000
    warmup: int = 3  # exchanges per connection before a late attach
    pipeline: int = 1  # HTTP/1.1 requests per write before their responses (depth)
    mixed: bool = False  # HTTP/1.1 plan of HEAD, 304, 204 and 100-continue uploads
    client_args: tuple[str, ...] = ()  # stream-shape options of the targets
    server_args: tuple[str, ...] = ()
    servers: tuple[str, ...] = LANGS  # server languages that can run the scenario
    clients: tuple[str, ...] = ("py", "go")  # client languages that take client_args

    @property
    def is_grpc(self) -> bool:
        return self.proto == "grpc"

    @property
    def is_h2(self) -> bool:
        """HTTP/2 on the wire (gRPC or plain h2c): the truth decodes its port as http2."""
        return self.protocol.startswith("h2c")


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("http10-short", "http10", "http/1.0", connections=1, warmup=20),
        Scenario("http11-keepalive", "http11", "http/1.1"),
        Scenario("http11-pipelined", "http11", "http/1.1", pipeline=8, default_exchanges=2000,
                 warmup=8),
        Scenario("http11-mixed", "http11", "http/1.1", mixed=True, default_exchanges=400,
                 warmup=4),
        Scenario("grpc-unary", "grpc", "h2c-grpc", "unary", default_exchanges=1000),
        Scenario("grpc-server-stream", "grpc", "h2c-grpc", "server-stream", default_exchanges=200),
        Scenario("grpc-client-stream", "grpc", "h2c-grpc", "client-stream", default_exchanges=200),
        Scenario("grpc-bidi", "grpc", "h2c-grpc", "bidi", default_exchanges=200),
        # Stream shapes of real clients: 60 concurrent streams on one connection, every 7th
        # call ended early (deadline, cancel: RST_STREAM before the response headers),
        # gzip-compressed messages.
        Scenario("grpc-unary-shapes", "grpc", "h2c-grpc", "unary", connections=1,
                 default_exchanges=600,
                 client_args=("--inflight", "60", "--cancel-every", "7", "--compress", "gzip"),
                 servers=("py", "go")),  # they wait when the call asks (x-probebench-delay-ms)
        # Server streams cancelled after the response headers (and deadlines), while the
        # server sends GOAWAY every 2 s and the client reconnects.
        Scenario("grpc-stream-shapes", "grpc", "h2c-grpc", "server-stream", connections=1,
                 default_exchanges=200,
                 client_args=("--inflight", "8", "--cancel-every", "5"),
                 server_args=("--max-connection-age", "2s"), servers=("go",)),
        # The HTTP/1 plan (methods, statuses, extra headers, bodies streamed without a
        # length) over prior-knowledge h2c: Go net/http's own HTTP/2 and Node's http2.
        Scenario("h2c-plain", "h2c", "h2c", default_exchanges=1000, servers=("go", "node")),
    )
}


def get(name: str) -> Scenario:
    try:
        return SCENARIOS[name]
    except KeyError as e:
        raise ProbebenchError(
            f"unknown scenario {name!r}; choose one of: {', '.join(SCENARIOS)}"
        ) from e


def _go_binary(kind: str, role: str, grpc_version: str | None) -> Path:
    if kind == "grpc":
        ver = grpc_version or CURRENT_GRPC_GO
        path = GO_BIN / f"grpc-{role}-{ver}"
    else:
        path = GO_BIN / f"http1-{role}"
    if not path.exists():
        raise ProbebenchError(f"Go target {path} is not built: run scripts/build-targets")
    return path


def _check_lang(s: Scenario, lang: str) -> None:
    if lang not in LANGS:
        raise ProbebenchError(f"unknown target language {lang!r}; "
                              f"choose one of: {', '.join(LANGS)}")  # fmt: skip
    if s.proto not in LANG_PROTOS[lang]:
        speaks = ", ".join(n for n, sc in SCENARIOS.items() if sc.proto in LANG_PROTOS[lang])
        raise ProbebenchError(f"the {lang} targets do not run {s.name}; they run: {speaks}")


def _check_server(s: Scenario, lang: str) -> None:
    _check_lang(s, lang)
    if lang not in s.servers:
        raise ProbebenchError(f"scenario {s.name} needs a {' or '.join(s.servers)} server")


def check_pair(s: Scenario, client: str, server: str) -> None:
    """Both targets can run the scenario: an error before a run directory exists."""
    _check_lang(s, client)
    _check_server(s, server)


def _node_script(role: str, proto: str = "grpc") -> list[str]:
    script = NODE_DIR / f"{proto}_{role}.js"
    if proto == "grpc" and not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        raise ProbebenchError("the Node targets' packages are not installed: "
                              "run scripts/build-targets")  # fmt: skip
    return ["node", str(script)]


def _java_main(main_class: str) -> list[str]:
    cp = JAVA_DIR / "target" / "classpath.txt"
    if not cp.is_file():
        raise ProbebenchError("the Java targets are not built: run scripts/build-targets")
    classpath = f"{JAVA_DIR / 'target' / 'classes'}:{cp.read_text().strip()}"
    return ["java", "-Xmx512m", "-cp", classpath, main_class]


def _rust_binary(role: str) -> list[str]:
    path = RUST_BIN / f"grpc_{role}"
    if not path.exists():
        raise ProbebenchError(f"Rust target {path} is not built: run scripts/build-targets")
    return [str(path)]


def server_command(s: Scenario, lang: str, port: int, grpc_version: str | None) -> list[str]:
    _check_server(s, lang)
    common = ["--proto", s.proto, "--host", "127.0.0.1", "--port", str(port)]
    if lang == "node":
        return [*_node_script("server", s.proto), *common]
    if lang == "java":
        return [*_java_main("probebench.GrpcServer"), *common]
    if lang == "rust":
        return [*_rust_binary("server"), *common]
    if lang == "go":
        binary = _go_binary("grpc" if s.is_grpc else "http1", "server", grpc_version)
        return [str(binary), *common, *s.server_args]
    script = SCEN_DIR / "py" / ("grpc_server.py" if s.is_grpc else "http1_server.py")
    return [sys.executable, str(script), *common, *s.server_args]


def client_command(
    s: Scenario,
    lang: str,
    port: int,
    *,
    exchanges: int,
    seed: int,
    warmup: int,
    workload: Path,
    grpc_version: str | None,
    deadline: float,
    rate: float | None = None,
) -> list[str]:
    """The client's argv; ``rate`` (Go clients) paces the main phase open loop, per second."""
    args = [
        "--proto", s.proto, "--host", "127.0.0.1", "--port", str(port),
        "--exchanges", str(exchanges), "--seed", str(seed),
        "--connections", str(s.connections), "--warmup", str(warmup),
        "--workload", str(workload), "--deadline", str(int(deadline)),
    ]  # fmt: skip
    if s.mode:
        args += ["--mode", s.mode]
    if s.pipeline > 1:
        args += ["--pipeline", str(s.pipeline)]
    if s.mixed:
        args.append("--mixed")
    if s.client_args:
        if lang not in s.clients:
            raise ProbebenchError(f"scenario {s.name} needs a {' or '.join(s.clients)} client")
        args += s.client_args
    if rate:
        if lang != "go":
            raise ProbebenchError("only the Go clients pace to a --rate")
        args += ["--rate", str(rate)]
    _check_lang(s, lang)
    if lang == "node":
        return [*_node_script("client", s.proto), *args]
    if lang == "java":
        return [*_java_main("probebench.GrpcClient"), *args]
    if lang == "rust":
        return [*_rust_binary("client"), *args]
    if lang == "go":
        return [str(_go_binary("grpc" if s.is_grpc else "http1", "client", grpc_version)), *args]
    script = SCEN_DIR / "py" / ("grpc_client.py" if s.is_grpc else "http1_client.py")
    return [sys.executable, str(script), *args]


def keylog_writer(s: Scenario, lang: str) -> bool:
    """Whether this target can write its TLS secrets: Python's ssl and Go's crypto/tls can;
    grpcio's TLS (BoringSSL inside its C core) offers Python no key log."""
    return not (s.is_grpc and lang == "py")


def check_tls(s: Scenario) -> None:
    """A scenario that has no TLS variant is an error before anything starts."""
    if s.proto == "h2c":
        raise ProbebenchError(f"{s.name} is cleartext HTTP/2 with prior knowledge: it has no "
                              "TLS variant")


def tls_arguments(
    s: Scenario, lang: str, tls_dir: Path | None, version: str, keylog: Path | None
) -> list[str]:
    """The target options of a TLS run (scenarios/README.md, "TLS"); none without TLS."""
    if tls_dir is None:
        return []
    check_tls(s)
    args = ["--tls-dir", str(tls_dir), "--tls-version", version]
    if keylog is not None and keylog_writer(s, lang):
        args += ["--keylog", str(keylog)]
    return args


def _version_after(path: Path, pattern: str) -> str | None:
    """The first match group of ``pattern`` in a build file, or None when not there."""
    try:
        m = re.search(pattern, path.read_text(), re.MULTILINE)
    except OSError:
        return None
    return m.group(1) if m else None


def target_versions() -> dict[str, Any]:
    """The gRPC library versions of every target stack, read from their build files (None:
    that stack is not set up in this checkout): recorded in run.json's machine."""
    go = {}
    for ver in GRPC_GO_VERSIONS:
        go[ver] = _version_after(SCEN_DIR / "go" / f"grpc-{ver}" / "go.mod",
                                 r"^\s*google\.golang\.org/grpc (v\S+)")  # fmt: skip
    try:
        grpcio: str | None = importlib.metadata.version("grpcio")
    except importlib.metadata.PackageNotFoundError:
        grpcio = None
    return {
        "grpc_go": go,
        "grpcio": grpcio,
        "grpc_js": _version_after(SCEN_DIR / "node" / "node_modules" / "@grpc" / "grpc-js"
                                  / "package.json", r'"version":\s*"([^"]+)"'),
        "grpc_java": _version_after(SCEN_DIR / "java" / "pom.xml",
                                    r"<grpc\.version>([^<]+)</grpc\.version>"),
        "tonic": _version_after(SCEN_DIR / "rust" / "Cargo.lock",
                                r'^name = "tonic"\nversion = "([^"]+)"'),
    }  # fmt: skip
