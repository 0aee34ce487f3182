"""What the replay's truth worker process runs: the capture's decode, in batches or whole.

Kept apart from ``replay`` so that the worker (forked by the forkserver, which imports the
target's module) does not import pandas and pyarrow, which only the replay's own process
uses: half a CPU second a replay."""

from __future__ import annotations

import gc
import resource
from pathlib import Path
from typing import Any

from harness.compact import Sharer
from harness.groundtruth.extract import extract_exchanges, stream_exchanges
from harness.model import Exchange

# Allocations between the cyclic GC's young collections during a replay (Python's default,
# 700, made collections 14% of a 138k-exchange replay's CPU: each older one walks every
# exchange held in the matching window; a replay makes few cycles).
GC_THRESHOLD = (100_000, 20, 100)


def usage() -> dict[str, float]:
    """This process's peak RSS (KiB) and CPU seconds, its waited-for children's (tshark)
    apart: CPU seconds are what the replay's cost is compared by on a loaded machine."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"peak_rss_kb": me.ru_maxrss, "cpu_s": round(me.ru_utime + me.ru_stime, 2),
            "children_cpu_s": round(kids.ru_utime + kids.ru_stime, 2),
            "children_peak_rss_kb": kids.ru_maxrss}  # fmt: skip


def extract(
    pcap: Path, http1_ports: list[int], h2c_ports: list[int], offset: int, out_of_order: bool,
    keylog: Path | None = None,
) -> tuple[list[Exchange], Any, dict[str, float]]:
    """The truth, its stats, and what the process that decoded it used (a worker's is no
    child's of the replay: the forkserver forked it)."""
    truth, stats = extract_exchanges(
        pcap, http1_ports=http1_ports, h2c_ports=h2c_ports, mono_offset_ns=offset,
        out_of_order=out_of_order, tls_keylog=keylog,
    )  # fmt: skip
    Sharer()(truth)
    return truth, stats, usage()


def stream_truth(q: Any, args: tuple[Any, ...]) -> None:
    """In the worker: the truth in batches with their watermark, then ("end", stats, peak
    RSS) or ("error", exception)."""
    pcap, http1_ports, h2c_ports, offset, out_of_order, keylog = args
    gc.set_threshold(*GC_THRESHOLD)  # this process's own: it ends with the stream
    try:
        share = Sharer()
        gen = stream_exchanges(pcap, http1_ports=http1_ports, h2c_ports=h2c_ports,
                               mono_offset_ns=offset, out_of_order=out_of_order,
                               tls_keylog=keylog)  # fmt: skip
        while True:
            try:
                b = next(gen)
            except StopIteration as stop:
                q.put(("end", stop.value, usage()))
                return
            share(b.exchanges)
            q.put(("batch", b.exchanges, b.watermark_ns))
    except Exception as e:  # handed to the replay, which raises it
        q.put(("error", e, 0))
