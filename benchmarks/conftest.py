"""Benchmark settings and the `bpf` marker's skip rule (tests/conftest.py does not reach here).

Overhead settings, each an option or an environment variable (the option wins):

    --overhead-rounds N      PROBEBENCH_OVERHEAD_ROUNDS   interleaved rounds (default 3: quick)
    --overhead-scale F       PROBEBENCH_OVERHEAD_SCALE    exchanges per run x F (default 0.2)
    --overhead-servers L     PROBEBENCH_OVERHEAD_SERVERS  "go" (default), "go,py"
    --overhead-scenarios L   PROBEBENCH_OVERHEAD_SCENARIOS  "http11-keepalive,grpc-unary" (default)
    --overhead-out PATH      PROBEBENCH_OVERHEAD_OUT      results/overhead.json (default)
    --overhead-fixed-rate-only  PROBEBENCH_OVERHEAD_FIXED_RATE_ONLY=1
                             only the fixed-rate pass (each collector's CPU at 2,000
                             exchanges/s, and idle): no rounds, trap or TLS pass; written
                             to results/overhead-fixed-rate.json unless --overhead-out

At scale 1 one configuration's client phase takes about 1.5-2 s on this machine; a
measurement run is e.g. `PROBEBENCH_OVERHEAD_ROUNDS=8 PROBEBENCH_OVERHEAD_SCALE=1`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.doctor import missing_for

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ("http11-keepalive", "grpc-unary")  # the workloads the bench knows


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("probebench overhead")
    g.addoption("--overhead-rounds", type=int, default=None, help="interleaved rounds")
    g.addoption("--overhead-scale", type=float, default=None, help="exchanges multiplier")
    g.addoption("--overhead-servers", default=None, help="server languages, e.g. go,py")
    g.addoption("--overhead-scenarios", default=None, help="workloads, e.g. grpc-unary")
    g.addoption("--overhead-out", type=Path, default=None, help="where overhead.json goes")
    g.addoption("--overhead-fixed-rate-only", action="store_true", default=None,
                help="only the fixed-rate pass")


@dataclass(frozen=True)
class OverheadSettings:
    rounds: int
    scale: float
    servers: tuple[str, ...]
    out: Path
    scenarios: tuple[str, ...] = SCENARIOS
    fixed_rate_only: bool = False


@pytest.fixture(scope="session")
def overhead_settings(pytestconfig: pytest.Config) -> OverheadSettings:
    def pick(opt: str, env: str, default: str) -> str:
        v = pytestconfig.getoption(opt)
        return str(v) if v is not None else os.environ.get(env, default)

    rounds = int(pick("overhead_rounds", "PROBEBENCH_OVERHEAD_ROUNDS", "3"))
    scale = float(pick("overhead_scale", "PROBEBENCH_OVERHEAD_SCALE", "0.2"))
    servers = tuple(s for s in pick("overhead_servers", "PROBEBENCH_OVERHEAD_SERVERS",
                                    "go").split(",") if s)  # fmt: skip
    fixed_only = pick("overhead_fixed_rate_only", "PROBEBENCH_OVERHEAD_FIXED_RATE_ONLY",
                      "") not in ("", "0", "False")  # fmt: skip
    # a partial file must not take the place of a whole run's
    default_out = "overhead-fixed-rate.json" if fixed_only else "overhead.json"
    out = Path(pick("overhead_out", "PROBEBENCH_OVERHEAD_OUT",
                    str(ROOT / "results" / default_out)))  # fmt: skip
    scens = tuple(s for s in pick("overhead_scenarios", "PROBEBENCH_OVERHEAD_SCENARIOS",
                                  ",".join(SCENARIOS)).split(",") if s)  # fmt: skip
    if rounds < 1 or scale <= 0 or not set(servers) <= {"go", "py"} or not servers:
        raise pytest.UsageError("overhead: rounds >= 1, scale > 0, servers from go,py")
    if not scens or not set(scens) <= set(SCENARIOS):
        raise pytest.UsageError(f"overhead: scenarios from {','.join(SCENARIOS)}")
    return OverheadSettings(rounds, scale, servers, out, scens, fixed_only)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("bpf") is None:
        return
    why = missing_for("bpf")
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"bpf benchmark cannot run in CI: {why}", pytrace=False)
        pytest.skip(f"bpf: {why}")
