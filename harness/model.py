"""The canonical Exchange record and the versioned run-directory files (run.json, metrics.json)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import operator
import os
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from harness.errors import RunDirError, UnknownVersionError

RUN_VERSION = 1
METRICS_VERSION = 1

# "truth", "workload", or a collector's registered name
Source = str
Side = Literal["client", "server", "wire"]

# Protocol families: a run's protocol is http/1.0, http/1.1, h2c-grpc or h2c (tls- in front
# in the report when carried over TLS); h2c and h2c-grpc are the HTTP/2 family.
H2_FAMILY = "h2c"


def is_h2(protocol: str) -> bool:
    """HTTP/2 (h2c, h2c-grpc), as opposed to HTTP/1.x."""
    return protocol.startswith(H2_FAMILY)


def is_grpc(protocol: str) -> bool:
    return protocol == H2_FAMILY + "-grpc"


# Degradation reasons: one vocabulary for every source, so the report can add them up.
NO_PEER_ADDRESS = "no_peer_address"
HEADERS_MISSED_STREAM = "headers_missed_stream"  # the stream's header block was not seen
STREAM_INCOMPLETE = "stream_incomplete"  # the stream's end was not seen
TRUNCATED_PAYLOAD = "truncated_payload"
TRUNCATED_VALUE = "truncated_value"  # a name or value longer than a probe's cap
TRUNCATED_HEADERS = "truncated_headers"  # fields of a block a probe did not read
NOT_COLLECTED = "not_collected"  # the recording's options do not look at it
HPACK_UNKNOWN_INDEX = "hpack_unknown_index"
HPACK_DECODE_ERROR = "hpack_decode_error"
MALFORMED_HEADERS = "malformed_headers"
TRUTH_UNRELIABLE = "truth_unreliable"
TRUTH_HPACK_UNKNOWN = "truth_hpack_unknown"
STREAM_RESET = "stream_reset"  # ended by RST_STREAM: what would have followed is not there
# RST_STREAM CANCEL on a call with a deadline: a cancel or the deadline, not told apart
RST_CANCEL_OR_DEADLINE = "rst_cancel_or_deadline"

# Run-directory layout, relative to the run directory.
RUN_JSON = "run.json"
METRICS_JSON = "metrics.json"
CAPTURE = "capture.pcapng"
WORKLOAD = "workload.jsonl"
EVENTS_DIR = "events"
EXCHANGES_DIR = "exchanges"
# TLS runs: the throwaway CA, server certificate and key logs (secrets stay in the run dir)
TLS_DIR = "tls"


@dataclass(frozen=True, slots=True)
class Degradation:
    """One field a source could not determine (or got wrong), and why."""

    field: str
    reason: str  # e.g. hpack_unknown_index, no_peer_address, truncated_payload


@dataclass(slots=True)
class Exchange:
    """One HTTP request/response pair or one gRPC call, as one source saw it."""

    source: Source
    side: Side
    protocol: str
    run_id: str = ""
    scenario: str = ""
    client_ip: str | None = None
    client_port: int | None = None
    server_ip: str | None = None
    server_port: int | None = None
    conn_seq: int | None = None  # position on the connection (HTTP/1), 0-based
    stream_id: int | None = None  # HTTP/2 stream id
    method: str | None = None
    path: str | None = None
    authority: str | None = None
    status: int | None = None
    grpc_status: int | None = None
    grpc_message: str | None = None
    req_headers: dict[str, str] = field(default_factory=dict)
    resp_headers: dict[str, str] = field(default_factory=dict)
    trailers: dict[str, str] = field(default_factory=dict)
    req_bytes: int | None = None
    resp_bytes: int | None = None
    req_messages: int | None = None
    resp_messages: int | None = None
    t_start_ns: int | None = None
    t_end_ns: int | None = None
    pid: int | None = None  # observing process, for collector sources
    conn_id: str | None = None  # source-local connection key, for diagnostics
    degraded: list[Degradation] = field(default_factory=list)

    def degrade(self, field_name: str, reason: str) -> None:
        for d in self.degraded:  # a plain loop: called ~10 times per exchange
            if d.field == field_name:
                return
        self.degraded.append(Degradation(field_name, reason))

    def __reduce__(self) -> tuple[type[Exchange], tuple[Any, ...]]:
        # pickled (a replay's worker processes hand exchanges over in batches) as the
        # constructor's arguments: half the bytes and time of the default slot state
        return Exchange, _exchange_fields(self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["degraded"] = [[x.field, x.reason] for x in self.degraded]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Exchange:
        d = dict(d)
        d["degraded"] = [Degradation(f, r) for f, r in d.get("degraded") or []]
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


_exchange_fields = operator.attrgetter(*(f.name for f in dataclasses.fields(Exchange)))


# Start-up waits (targets ready, dumpcap capturing, probes attached) are multiplied by
# this factor from the environment: an emulated guest (`probebench kernels`) is 25-35x
# slower than the host. It never changes what is measured, only how long we wait.
SLOWDOWN_ENV = "PROBEBENCH_SLOWDOWN"
# set in a guest of `probebench kernels`: its pytest prints each failure's traceback as it
# happens (tests/conftest.py), since a guest killed at its timeout never prints the summary
TRACEBACK_NOW_ENV = "PROBEBENCH_TRACEBACK_NOW"


def waited(seconds: float) -> float:
    """A start-up timeout, scaled for a slow machine (PROBEBENCH_SLOWDOWN, default 1)."""
    try:
        return seconds * max(1.0, float(os.environ.get(SLOWDOWN_ENV, "1")))
    except ValueError:
        return seconds


# -- versioned JSON files ------------------------------------------------------


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write through a temporary file so a crash never leaves half a JSON file behind."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def load_versioned(path: Path, supported: int) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise RunDirError(f"{path} does not exist") from e
    except json.JSONDecodeError as e:
        raise RunDirError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(obj, dict) or "version" not in obj:
        raise RunDirError(f"{path} has no 'version' field: not a probebench file")
    if obj["version"] != supported:
        raise UnknownVersionError(
            f"{path} has version {obj['version']!r}; this probebench reads version {supported}"
        )
    return obj


def _cmd_output(args: list[str], cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10, cwd=cwd, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _first_line(text: str | None) -> str | None:
    return text.splitlines()[0] if text else None


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def machine_info() -> dict[str, Any]:
    """Machine, tool and source versions, recorded with every run like pyperf's metadata."""
    root = repo_root()
    cpu_model = None
    cpu: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            if not k.strip() and cpu:
                break  # the first processor's block is enough
            cpu.setdefault(k.strip(), v.strip())
        cpu_model = cpu.get("model name")
    except OSError:
        pass
    # A VM may show only "AMD EPYC" as the model name: family/model/stepping tell which one.
    cpu_id = (f"{cpu.get('vendor_id', '?')} family {cpu.get('cpu family', '?')} model "
              f"{cpu.get('model', '?')} stepping {cpu.get('stepping', '?')}") if cpu else None
    try:
        import bcc  # optional: replay machines need no bcc

        bcc_version = getattr(bcc, "__version__", None)
    except ImportError:
        bcc_version = None
    dirty = _cmd_output(["git", "status", "--porcelain"], cwd=root)
    return {
        "hostname": platform.node(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "cpu_model": cpu_model,
        "cpu_id": cpu_id,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "bcc": bcc_version,
        "tshark": _first_line(_cmd_output(["tshark", "--version"])),
        "go": _cmd_output(["go", "env", "GOVERSION"]),
        "git_commit": _cmd_output(["git", "rev-parse", "HEAD"], cwd=root),
        "git_dirty": bool(dirty),
    }


@dataclass(slots=True)
class RunManifest:
    """run.json: what was recorded, how, on what machine, and how it ended."""

    run_id: str
    scenario: str
    params: dict[str, Any]
    started_utc: str
    machine: dict[str, Any]
    finished_utc: str | None = None
    status: Literal["recording", "complete", "failed", "interrupted"] = "recording"
    error: str | None = None
    attach_ns: int | None = None  # CLOCK_MONOTONIC when collectors started recording
    ports: list[int] = field(default_factory=list)
    processes: list[dict[str, Any]] = field(default_factory=list)  # pid, role, lang, binary
    collectors: dict[str, dict[str, Any]] = field(default_factory=dict)  # stats per collector
    capture: dict[str, Any] = field(default_factory=dict)  # dumpcap stats, drops
    # bytes on disk (capture, events) and per 1,000 truth exchanges; set by replay
    recording: dict[str, Any] = field(default_factory=dict)
    clock: str = "CLOCK_MONOTONIC"
    version: int = RUN_VERSION

    def save(self, run_dir: Path) -> None:
        write_json_atomic(run_dir / RUN_JSON, dataclasses.asdict(self))

    @classmethod
    def load(cls, run_dir: Path) -> RunManifest:
        obj = load_versioned(run_dir / RUN_JSON, RUN_VERSION)
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in obj.items() if k in names})
        except TypeError as e:
            raise RunDirError(f"{run_dir / RUN_JSON} is missing fields: {e}") from e


def save_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    metrics = {"version": METRICS_VERSION, **metrics}
    write_json_atomic(run_dir / METRICS_JSON, metrics)


def sweep_path(run_dir: Path, attach_at_s: float) -> Path:
    """Where a replay as if attached ``attach_at_s`` later is kept (the report globs these)."""
    return run_dir / f"metrics.attach-at-{attach_at_s:g}s.json"


def save_sweep(run_dir: Path, attach_at_s: float, metrics: dict[str, Any]) -> Path:
    """The one writer of sweep files: versioned like metrics.json, and atomic."""
    path = sweep_path(run_dir, attach_at_s)
    write_json_atomic(path, {"version": METRICS_VERSION, **metrics})
    return path


def load_metrics(run_dir: Path) -> dict[str, Any]:
    return load_versioned(run_dir / METRICS_JSON, METRICS_VERSION)
