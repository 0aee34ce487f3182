"""The short table `probebench run` and `replay` print at the end."""

from __future__ import annotations

from typing import Any


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def summary_table(metrics: dict[str, Any]) -> str:
    tvw = metrics.get("truth_vs_workload")
    truth = metrics.get("truth") or {}
    if metrics.get("truth_unavailable"):
        return f"run {metrics['run_id']}\nNO TRUTH: {metrics['truth_unavailable']}"
    lines = [
        f"run {metrics['run_id']}",
        f"truth: {truth.get('exchanges', '?')} exchanges decoded by Wireshark",
        f"truth vs workload: {tvw['matched']}/{tvw['workload']} workload exchanges found "
        f"in the capture ({tvw['missing']} missing, {tvw['extra']} extra)"
        if tvw
        else "truth vs workload: no workload record (observe run)",
        *(
            [
                f"WARNING: the capture dropped {dropped} packets; the truth is incomplete and "
                "the scores below are not reliable"
            ]
            if (dropped := (metrics.get("capture") or {}).get("packets_dropped"))
            else []
        ),
        "",
        f"{'collector':<9} {'variant':<12} {'side':<6} {'observable':>10} {'matched':>8} "
        f"{'complete':>9} {'degraded':>9} {'wrong':>6} {'exact':>7} {'phantom':>7} {'noaddr':>6} "
        f"{'lost':>5}",
    ]
    for r in metrics["rows"]:
        lines.append(
            f"{r['collector']:<9} {r['variant']:<12} {r['side']:<6} {r['observable']:>10} "
            f"{r['matched']:>8} {_pct(r['completeness']):>9} {_pct(r['degradation_rate']):>9} "
            f"{r['wrong']:>6} {_pct(r['exact_rate']):>7} {r['phantoms']:>7} "
            f"{r.get('unmatched_no_address', 0):>6} {r['lost_events']:>5}"
        )
        if r["degraded_by_reason"]:
            reasons = ", ".join(f"{k}={v}" for k, v in r["degraded_by_reason"].items())
            lines.append(f"{'':<9} {'':<12} {'':<6}   reasons: {reasons}")
        if r.get("not_covered"):
            lines.append(f"{'':<9} {'':<12} {'':<6}   not covered: {r['not_covered']}")
        if r.get("undecodable"):
            seen = ", ".join(f"{k}={v}" for k, v in r["undecodable"].items())
            lines.append(f"{'':<9} {'':<12} {'':<6}   seen, not decodable: {seen}")
    # connections a collector kept without an address, by reason (never dropped silently)
    for name, c in (metrics.get("collectors") or {}).items():
        for variant, v in c.items():
            unknown = isinstance(v, dict) and (v.get("decode") or {}).get("addresses_unknown")
            if unknown:
                why = ", ".join(f"{k}={n}" for k, n in sorted(unknown.items()))
                lines.append(f"{name} {variant}: connections without an address: {why}")
    return "\n".join(lines)
