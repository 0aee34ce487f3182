"""The `probebench` command line: doctor, run, observe, replay, report, matrix."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.collectors import registry
from harness.collectors.base import H1_BODIES, LEVELS, CollectorOptions
from harness.errors import ProbebenchError
from harness.model import repo_root, save_sweep
from harness.runner.lifecycle import Interrupted

DEFAULT_RUNS = repo_root() / "results" / "runs"


def _progress(msg: str) -> None:
    print(f"  · {msg}", file=sys.stderr, flush=True)


def cmd_doctor(a: argparse.Namespace) -> int:
    from harness import doctor

    checks = doctor.run_checks()
    if a.json:
        print(json.dumps(doctor.as_json(checks), indent=2))
    else:
        marks = {"ok": "OK  ", "warn": "WARN", "fail": "FAIL", "unavailable": "N/A "}
        width = max(len(c.name) for c in checks)
        for c in checks:
            line = f"{marks[c.status]}  {c.name:<{width}}  {c.detail}"
            if c.status in ("fail", "warn", "unavailable") and c.fix:
                line += f"\n      {'':<{width}}  fix: {c.fix}"
            print(line)
        verdict = "can record" if doctor.can_record(checks) else "CANNOT record"
        print(f"\nThis machine {verdict} (kernel-side and uprobe collectors).")
    return 0 if doctor.can_record(checks) else 1


def cmd_run(a: argparse.Namespace) -> int:
    from harness.runner.record import RunSpec
    from harness.workflows.run import record_and_replay

    spec = RunSpec(
        scenario=a.scenario,
        client=a.client,
        server=a.server,
        attach=a.attach,
        collectors=a.collectors,
        exchanges=a.exchanges,
        seed=a.seed,
        grpc_version=a.grpc_go,
        port=a.port,
        options=CollectorOptions(
            max_capture=a.max_capture, h2_body_limit=a.h2_body_limit, h1_bodies=a.h1_bodies,
            ringbuf_pages=a.ringbuf_pages,
            uprobe_level=a.uprobe_level, uprobe_value_max=a.uprobe_value_max,
            kernel_hooks=a.kernel_hooks,
        ),
        tls=a.tls,
        tls_version=a.tls_version,
        pipeline_depth=a.pipeline_depth,
    )
    run_dir = record_and_replay(spec, a.out, _progress)
    print(run_dir)
    return 0


def cmd_replay(a: argparse.Namespace) -> int:
    from harness.analysis.replay import replay
    from harness.report.summary import summary_table

    for d in a.dirs:
        metrics = replay(d, attach_at_s=a.attach_at)
        print(summary_table(metrics))
        if a.attach_at is not None:
            print(save_sweep(d, a.attach_at, metrics))
        else:
            print(d / "metrics.json")
    return 0


def cmd_report(a: argparse.Namespace) -> int:
    from harness.report.build import build_report

    out = build_report(a.dirs, a.out)
    print(out)
    return 0


def cmd_matrix(a: argparse.Namespace) -> int:
    from harness.workflows.matrix import cells, run_cell, run_matrix

    if a.list:
        listed = cells()
        if a.json:
            print(json.dumps(listed, indent=1))
        else:
            for c in listed:
                print(f"{c['matrix']:8} {c['id']}")
        return 0
    if a.cell:
        print(run_cell(a.cell, a.out, _progress))
        return 0
    if a.quick and a.full:
        raise ProbebenchError("--quick and --full are two different matrices: choose one")
    report = run_matrix(quick=a.quick, full=a.full, out=a.out, report_dir=a.report,
                        progress=_progress,
                        overhead=not a.no_overhead)
    print(report)
    return 0


def _replay_all(runs: list[Path], done: list[Path]) -> list[str]:
    """Replay each run, appending it to `done`; what failed, one line each."""
    from harness.analysis.replay import replay

    failed = []
    for d in runs:
        try:
            replay(d)
        except ProbebenchError as e:
            failed.append(f"replay {d.name}: {e}")
        done.append(d)
    return failed


def _host_cells(out: Path, quick: bool, done: list[Path]) -> list[str]:
    """The guests' cells on this machine's kernel (its hook modes), recorded and replayed;
    what failed, one line each."""
    from harness.collectors.kprobe.hooks import HOOKS, hook_modes
    from harness.runner.kernels_guest import record_cells

    _progress("the same cells on this machine's kernel, beside the guests")
    host = record_cells(out, quick, [m for m in HOOKS if hook_modes()[m] is None])
    failed = [f"host: {r['kernel_hooks']} {r['scenario']}: {r['error']}"
              for r in host if r.get("error")]  # fmt: skip
    return failed + _replay_all([Path(r["run_dir"]) for r in host if r.get("run_dir")], done)


def cmd_kernels(a: argparse.Namespace) -> int:
    import time
    from concurrent.futures import ThreadPoolExecutor
    from threading import Event

    from harness.report.build import build_report
    from harness.report.load import load
    from harness.report.tables import hook_agreement, kernels_frame, rows_frame
    from harness.runner import kernels
    from harness.runner.kernels_guest import full_ids, shard
    from harness.runner.lifecycle import signals_as_exceptions

    t0 = time.monotonic()
    series = a.kernel or list(kernels.DEFAULT_SERIES)
    out = a.out / time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    if a.install_only:
        kernels.run_guests(series, a.quick, out, _progress, install_only=True)
        print("installed: QEMU, busybox, virtme-ng and the kernels of " + ", ".join(series))
        return 0
    tests = "none" if a.no_tests else a.tests or ("quick" if a.quick else "full")
    test_ids = a.test
    if a.test and (a.shard or a.tests not in (None, "full") or a.no_tests):
        raise ProbebenchError("--test names tests to run: leave out --shard and --tests")
    if a.test:
        tests = "full"
    if a.shard:
        if tests != "full":
            raise ProbebenchError("--shard cuts the full test set: use it with --tests full")
        test_ids = shard(full_ids(), *a.shard)
        _progress(f"tests: shard {a.shard[0]}/{a.shard[1]} of the full set, {len(test_ids)} "
                  f"tests ({test_ids[0]} … {test_ids[-1]})")
    kernels.run_guests(series, a.quick, out, _progress, install_only=True)  # before the host
    failed: list[str] = []
    dirs: list[Path] = []
    # the host's cells and their replays while the guests run: a guest under TCG leaves
    # host CPU idle between its compiles; record() stays on the main thread (signals)
    cancel = Event()  # an error or ^C here stops the guest too, not only at its timeout
    # SIGTERM too: QEMU runs in its own session, so a plain kill of this process would
    # leave the guest running to its timeout
    with signals_as_exceptions(), ThreadPoolExecutor(1) as pool:
        running = pool.submit(kernels.run_guests, series, a.quick, out, _progress,
                              timeout_s=a.timeout, tests=tests, cancel=cancel,
                              test_ids=test_ids)  # fmt: skip
        try:
            failed += _host_cells(out / "host", a.quick, dirs) if not a.no_host else []
            guests = running.result()
        except BaseException:
            cancel.set()
            raise
    guest_dirs = [d for _, _, g in guests for d in kernels.run_dirs(g)]
    failed += [f"{k.release}: {g['error']}" for k, _, g in guests if g.get("error")]
    failed += [f"{k.release}: tests exited {t.get('exit_code')} ({t.get('summary')})"
               for k, _, g in guests if isinstance(t := g.get("tests"), dict)
               and t.get("exit_code") != 0]  # fmt: skip
    failed += [f"{k.release}: {r['kernel_hooks']} {r['scenario']} {r['attach']}: {r['error']}"
               for k, _, g in guests for r in kernels.guest_runs(g) if r.get("error")]  # fmt: skip
    if guest_dirs:
        _progress(f"replaying the guests' {len(guest_dirs)} runs on this machine")
    failed += _replay_all(guest_dirs, dirs)
    if not dirs:
        raise ProbebenchError("no run came back from the guests: " + "; ".join(failed))
    agree = hook_agreement(kernels_frame(rows_frame(load(dirs).runs)))
    if not agree.empty:
        print(agree.to_string(index=False))
        failed += [f"{x.machine}: {x.scenario} {x.pair} {x.attach} {x.side}: kprobes differ"
                   for x in agree.itertuples() if x.same != "yes"]  # fmt: skip
    report = build_report(dirs, out / "report",
                          command=f"probebench report {out} --out {out}/report")
    print(f"took {time.monotonic() - t0:.0f} s (guests under TCG: noisy on a shared machine)")
    for f in failed:
        print(f"problem: {f}")
    print(f"runs: {out}")
    print(report)
    return 1 if failed else 0


def cmd_observe(a: argparse.Namespace) -> int:
    from harness.workflows.observe import observe

    if not a.command:
        raise ProbebenchError(
            "observe needs a command after --, e.g. -- curl http://127.0.0.1:8080/"
        )
    run_dir = observe(
        a.command,
        ports=a.port,
        h2c=a.h2c,
        duration_s=a.duration,
        collectors=a.collectors,
        out=a.out,
        progress=_progress,
        tls=a.tls,
        keylog=a.keylog,
        options=CollectorOptions(uprobe_level=a.uprobe_level, uprobe_value_max=a.uprobe_value_max,
                                 kernel_hooks=a.kernel_hooks),
        min_free_bytes=int(a.min_free_mb * (1 << 20)),
        replay_after=not a.no_replay,
        client=a.client,
        server=a.server,
        max_capture_bytes=int(a.max_capture_mb * (1 << 20)) if a.max_capture_mb else None,
    )
    print(run_dir)
    return 0


def _collectors(text: str) -> list[str]:
    names = [c for c in text.split(",") if c]
    unknown = sorted(set(names) - set(registry.NAMES))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"collectors are {', '.join(registry.NAMES)}, not {text!r}"
        )
    return names


def _shard(text: str) -> tuple[int, int]:
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise argparse.ArgumentTypeError(f"a shard is K/N with 1 <= K <= N, not {text!r}")
    return int(k), int(n)


def _uprobe_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--uprobe-level", choices=LEVELS, default=CollectorOptions.uprobe_level,
        help="uprobe: header blocks only (3 hits per unary call per side), or also every "
        "DATA frame (+1 hit each) for message counts and sizes",
    )  # fmt: skip
    p.add_argument(
        "--uprobe-value-max", type=int, default=CollectorOptions.uprobe_value_max,
        help="uprobe: header value bytes captured; a longer value is marked cut, never used",
    )  # fmt: skip


def _kernel_hooks_option(p: argparse.ArgumentParser) -> None:
    from harness.collectors.base import DEFAULT_KERNEL_HOOKS, KERNEL_HOOKS

    p.add_argument(
        "--kernel-hooks", choices=KERNEL_HOOKS, default=DEFAULT_KERNEL_HOOKS,
        help="kernel-side collector: syscall tracepoints, or kprobes on the syscall "
        "functions (__x64_sys_*; `probebench doctor` says which this kernel has)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="probebench",
        description="Measure kernel-side vs uprobe eBPF observation of HTTP and gRPC "
        "against Wireshark ground truth.",
    )
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("doctor", help="check what this machine can do, with fixes")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_doctor)

    from harness.scenarios import GRPC_GO_BUILDS, LANGS, SCENARIOS

    p = sub.add_parser("run", help="record one scenario run, analyse it, print its directory")
    p.add_argument("scenario", choices=list(SCENARIOS))
    p.add_argument("--client", choices=LANGS, default="py")
    p.add_argument("--server", choices=LANGS, default="py")
    p.add_argument("--attach", choices=["early", "late"], default="early")
    p.add_argument(
        "--collectors", type=_collectors, default=",".join(registry.default_names()),
        help="comma-separated",
    )
    p.add_argument("--exchanges", type=int, help="default: the scenario's")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument(
        "--grpc-go", choices=GRPC_GO_BUILDS,
        help="grpc-go version of Go targets (VER-stripped: the same, built -ldflags='-s -w')",
    )  # fmt: skip
    p.add_argument("--port", type=int, help="server port (default: a free one)")
    p.add_argument(
        "--pipeline-depth", type=int,
        help="HTTP/1.1 requests per write before their responses (http11-pipelined: 8)",
    )
    p.add_argument(
        "--max-capture", type=int, default=CollectorOptions.max_capture,
        help="payload bytes captured per syscall",
    )
    p.add_argument(
        "--h2-body-limit", type=int, default=CollectorOptions.h2_body_limit,
        help="gRPC message-body bytes captured per frame-aware HTTP/2 call (no field needs them)",
    )  # fmt: skip
    p.add_argument(
        "--h1-bodies", choices=H1_BODIES, default=CollectorOptions.h1_bodies,
        help="HTTP/1 bodies the kernel side can frame: left out of the capture, or captured",
    )
    p.add_argument("--ringbuf-pages", type=int, default=CollectorOptions.ringbuf_pages,
                   help="ring buffer, 4 KiB pages")
    p.add_argument("--tls", action="store_true", help="the same scenario over TLS")
    p.add_argument("--tls-version", choices=["1.2", "1.3"], default="1.3")
    _uprobe_options(p)
    _kernel_hooks_option(p)
    p.add_argument("--out", type=Path, default=DEFAULT_RUNS, help="parent of the run directory")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("observe", help="collect on any command's traffic on given ports")
    p.add_argument("--port", type=int, action="append", required=True)
    p.add_argument("--h2c", action="store_true", help="the ports carry h2c / gRPC")
    p.add_argument("--tls", action="store_true", help="the ports carry TLS (HTTPS, gRPC+TLS)")
    p.add_argument("--keylog", type=Path,
                   help="the NSS key log the workload writes (e.g. its SSLKEYLOGFILE)")
    p.add_argument("--duration", type=float, default=60.0, help="stop after this many s")
    p.add_argument("--client", default="user",
                   help="what the clients are, for the report (e.g. h2load)")
    p.add_argument("--server", default="user",
                   help="what the service is, for the report (e.g. nghttpd)")
    p.add_argument(
        "--min-free-mb", type=float, default=1024,
        help="stop cleanly (run marked interrupted, still replayable) below this free disk",
    )  # fmt: skip
    p.add_argument(
        "--max-capture-mb", type=float,
        help="end the observation when the capture reaches this size (a busy service's "
        "truth then decodes in bounded time; metrics.json truth_window gives the window)",
    )  # fmt: skip
    p.add_argument(
        "--no-replay", action="store_true", help="record only; `probebench replay DIR` later"
    )
    p.add_argument(
        "--collectors", type=_collectors, default=",".join(registry.default_names()),
        help="comma-separated; uprobe holds each exec of the command until it is probed",
    )  # fmt: skip
    _uprobe_options(p)
    _kernel_hooks_option(p)
    p.add_argument("--out", type=Path, default=DEFAULT_RUNS)
    p.add_argument("command", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_observe)

    p = sub.add_parser("replay", help="re-derive exchanges and metrics without root")
    p.add_argument("dirs", type=Path, nargs="+")
    p.add_argument("--attach-at", type=float, help="as if attached this many s later")
    p.set_defaults(fn=cmd_replay)

    p = sub.add_parser("report", help="tables and plots from run directories")
    p.add_argument("dirs", type=Path, nargs="+")
    p.add_argument("--out", type=Path, help="report directory (default: beside the runs)")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("matrix", help="run the default matrix, then the report")
    p.add_argument("--quick", action="store_true", help="a small matrix (minutes)")
    p.add_argument("--full", action="store_true",
                   help="every cell: each further stack, TLS pair, grpc-go build and mode")
    p.add_argument("--out", type=Path, default=DEFAULT_RUNS)
    p.add_argument("--report", type=Path, default=repo_root() / "results" / "latest")
    p.add_argument(
        "--no-overhead", action="store_true",
        help="skip the closing overhead pass (a short benchmarks/bench_overhead.py run; "
        "skipped anyway when results of this commit and machine are beside the runs)",
    )  # fmt: skip
    p.add_argument("--list", action="store_true",
                   help="print every cell (default and quick) with its stable id, run nothing")
    p.add_argument("--json", action="store_true", help="with --list: as a JSON array")
    p.add_argument("--cell", metavar="ID",
                   help="record and replay one cell into --out; prints its run directory")
    p.set_defaults(fn=cmd_matrix)

    p = sub.add_parser(
        "kernels", help="the BPF tests and a smoke matrix in Debian kernels booted as guests")
    p.add_argument("--kernel", action="append", metavar="VERSION",
                   help="a Debian kernel series, e.g. 6.1 or 6.12 (repeatable; default both): "
                   "its newest image and headers are found with apt and installed")
    p.add_argument("--quick", action="store_true",
                   help="the smoke set: one HTTP/1.1 (early) and one gRPC (late) run per hook "
                   "mode, and (unless --tests says otherwise) the quick tests")
    p.add_argument("--tests", choices=["quick", "full", "none"],
                   help="the tests in each guest: quick (kprobe mode on a real workload), "
                   "full (every test marked bpf or kprobes) or none; default quick with "
                   "--quick, else full")
    p.add_argument("--no-tests", action="store_true", help="the same as --tests none")
    p.add_argument("--shard", type=_shard, metavar="K/N",
                   help="with --tests full: only part K of N of it (contiguous, in the set's "
                   "order; the whole set needs about 3 h of a quiet machine per guest)")
    p.add_argument("--test", action="append", metavar="NODEID",
                   help="run only this test of the full set in each guest (repeatable; "
                   "e.g. one that failed there: tests/test_x.py::test_y)")
    p.add_argument("--no-host", action="store_true",
                   help="leave out the same cells on this machine's own kernel")
    p.add_argument("--install-only", action="store_true",
                   help="install QEMU, busybox, virtme-ng and the kernels; boot nothing")
    p.add_argument("--timeout", type=float, metavar="S",
                   help="per guest, boot to power-off (default: 420 with --quick, else 2400); "
                   "QEMU emulates the CPU, so a loaded machine needs more")
    p.add_argument("--out", type=Path, default=repo_root() / "results" / "kernels")
    p.set_defaults(fn=cmd_kernels)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "command", None) and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    try:
        return int(args.fn(args))
    except Interrupted as e:
        print(f"probebench: {e}; probes detached, children stopped", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("probebench: interrupted; probes detached, children stopped", file=sys.stderr)
        return 130
    except ProbebenchError as e:
        print(f"probebench: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
