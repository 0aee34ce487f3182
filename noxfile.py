"""Sessions: tests, lint, bench, replay, matrix. Thin wrappers over one helper.

They run in the project's own venv (.venv, made by scripts/setup), not in
per-session venvs: bcc comes from Debian and is linked into that venv only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent  # .venv/bin when run as scripts/bootstrap does
nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "tests"]


def _run(session: nox.Session, tool: str, *args: str) -> None:
    """Run a tool from the venv, with the session's posargs appended."""
    session.run(str(BIN / tool), *args, *session.posargs, external=True)


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite; with CI set, BPF tests must run (a missing capability fails)."""
    if os.environ.get("CI"):
        # Fail early and say why, rather than as skipped or erroring tests.
        session.run(str(BIN / "probebench"), "doctor", external=True)
    _run(session, "pytest", "-q", "-p", "no:cacheprovider")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff, then the layers (import-linter, pyproject's contracts), then the types (mypy)."""
    _run(session, "ruff", "check", "harness", "tests", "benchmarks", "noxfile.py")
    session.run(str(BIN / "lint-imports"), "--config", str(ROOT / "pyproject.toml"),
                external=True)
    session.run(str(BIN / "mypy"), str(ROOT / "harness"), external=True)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (pytest-benchmark), never part of the test suite."""
    benches = sorted((ROOT / "benchmarks").glob("bench_*.py"))
    session.log("benchmarks: " + ", ".join(b.name for b in benches))
    _run(
        session,
        "pytest",
        *map(str, benches),
        "-p",
        "no:cacheprovider",
        "--benchmark-only",
        f"--benchmark-json={ROOT / 'results' / 'bench.json'}",
    )


@nox.session
def replay(session: nox.Session) -> None:
    """Re-score run directories without root: nox -s replay -- DIR [DIR...]"""
    if not session.posargs:
        session.error("give run directories: nox -s replay -- results/runs/<run>")
    _run(session, "probebench", "replay")


@nox.session
def matrix(session: nox.Session) -> None:
    """The default matrix and its report (needs root): nox -s matrix [-- --quick]"""
    _run(session, "probebench", "matrix")


@nox.session
def kernels(session: nox.Session) -> None:
    """The BPF tests and a smoke matrix in Debian 6.1 and 6.12 guests (root; installs QEMU,
    busybox-static, virtme-ng and the kernels): nox -s kernels [-- --kernel 6.1 --quick]"""
    _run(session, "probebench", "kernels")
