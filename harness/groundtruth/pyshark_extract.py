"""The HTTP/1 ground truth again, through pyshark (PDML), to cross-check the ``-T fields`` path.

Same Exchange output as ``extract_exchanges`` for HTTP/1; it is several times
slower (see benchmarks/bench_groundtruth.py), so it is not the default. Expert
warnings are not collected here.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from harness.errors import CaptureError
from harness.groundtruth.extract import NO_BODY_STATUS, TruthStats, epoch_to_ns
from harness.groundtruth.tshark import check_capture_file, tshark_path, unescape
from harness.model import Exchange


def _all(layer: Any, name: str) -> list[str]:
    f = layer.get_field(name)
    return [x.show for x in f.all_fields] if f is not None else []


def _one(layer: Any, name: str) -> str | None:
    values = _all(layer, name)
    return values[0] if values else None


def _lines(layer: Any, name: str) -> list[str]:
    """Header lines as sent ("Name: value\\r\\n"): PDML's ``show`` turns CRLF into a space."""
    f = layer.get_field(name)
    return [unescape(x.showname) for x in f.all_fields] if f is not None else []


def _headers(layer: Any, name: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in _lines(layer, name):
        key, sep, value = line.rstrip("\r\n").partition(":")
        if sep:
            key = key.strip().lower()
            value = value.strip()
            out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def _body(layer: Any, *, none: bool) -> int | None:
    if none:
        return 0
    chunks = _all(layer, "chunk_size")
    if chunks:
        return sum(int(c) for c in chunks)
    clen = _one(layer, "content_length")
    return int(clen) if clen is not None else None


def _close_delimited(pkt: Any, http: Any) -> int | None:
    """Body that ends with the connection: reassembled bytes minus the header's."""
    reasm = [int(v) for layer in pkt.layers for v in _all(layer, "tcp_reassembled_length")]
    total = reasm[0] if reasm else int(pkt.tcp.len)
    status = "{} {} {}\r\n".format(
        _one(http, "response_version"), _one(http, "response_code"),
        _one(http, "response_phrase"))
    lines = _lines(http, "response_line")
    head = sum(len(t.encode()) for t in (status, *lines)) + 2
    return total - head if total >= head else None


def extract_http1_pyshark(
    pcap: Path, *, http1_ports: list[int], mono_offset_ns: int = 0
) -> tuple[list[Exchange], TruthStats]:
    """HTTP/1 exchanges on ``http1_ports`` via pyshark; output as ``extract_exchanges``."""
    import asyncio

    import pyshark  # slow to import; only this path needs it

    pcap = Path(pcap)
    check_capture_file(pcap)
    stats = TruthStats()
    # Our own loop: left to itself, pyshark installs a SIGCHLD-driven child watcher that
    # outlives the call, and once the process spawns enough children its unread wake-up
    # socket fills and every later signal raises in the handler.
    loop = asyncio.new_event_loop()
    cap = pyshark.FileCapture(
        str(pcap), keep_packets=False, tshark_path=tshark_path(), eventloop=loop,
        decode_as={f"tcp.port=={p}": "http" for p in http1_ports},
        override_prefs={"tcp.reassemble_out_of_order": "TRUE"},  # as tshark.decode_as
    )
    times: dict[int, int] = {}
    streams: set[int] = set()
    requests: dict[int, Exchange] = {}
    order: list[Exchange] = []
    conn_seq: Counter[int] = Counter()
    ports = set(http1_ports)
    try:
        for pkt in cap:
            num = int(pkt.frame_info.number)
            t = epoch_to_ns(pkt.sniff_timestamp) - mono_offset_ns
            times[num] = t
            stats.packets += 1
            if "tcp" not in pkt:
                continue
            tcp = pkt.tcp
            stream = int(tcp.stream)
            streams.add(stream)
            if "http" not in pkt:
                continue
            http = pkt.http
            ip = pkt.ip if "ip" in pkt else pkt.ipv6
            sport, dport = int(tcp.srcport), int(tcp.dstport)
            method = _one(http, "request_method")
            if method is not None and dport in ports:
                segs = [int(s) for layer in pkt.layers for s in _all(layer, "tcp_segment")]
                x = Exchange(
                    source="truth", side="wire",
                    protocol=(_one(http, "request_version") or "HTTP/1.1").lower(),
                    client_ip=ip.src, client_port=sport, server_ip=ip.dst, server_port=dport,
                    conn_seq=conn_seq[stream], method=method, path=_one(http, "request_uri"),
                    req_headers=_headers(http, "request_line"),
                    t_start_ns=times.get(min(segs), t) if segs else t,
                    conn_id=f"tcp.stream={stream}",
                )
                x.authority = x.req_headers.get("host")
                x.req_bytes = _body(http, none=False) or 0
                conn_seq[stream] += 1
                requests[num] = x
                order.append(x)
                continue
            code = _one(http, "response_code")
            if code is None or sport not in ports or (100 <= int(code) < 200 and code != "101"):
                continue  # not ours, or interim (100 Continue): the final response follows
            req_in = _one(http, "request_in")
            answered = requests.pop(int(req_in), None) if req_in else None
            if answered is None:
                stats.unpaired_responses += 1
                continue
            x = answered
            x.status = int(code)
            x.t_end_ns = t
            x.resp_headers = _headers(http, "response_line")
            x.resp_bytes = _body(
                http, none=x.method == "HEAD" or x.status in NO_BODY_STATUS or x.status == 101,
            )
            if x.resp_bytes is None:
                x.resp_bytes = _close_delimited(pkt, http)
    except pyshark.capture.capture.TSharkCrashException as e:
        raise CaptureError(f"tshark (under pyshark) failed on {pcap}: {e}") from e
    finally:
        try:
            cap.close()
        except pyshark.capture.capture.TSharkCrashException as e:
            # Seen (1 in ~3 full suites): every packet was read, then tshark's exit status
            # was 255. The decode is whole; the status is said, not turned into a failure.
            stats.warn("tshark (under pyshark) exited badly after the last packet: "
                       + str(e).splitlines()[0])  # fmt: skip
        finally:
            cap._running_processes.clear()  # nothing left for __del__ to close on a closed loop
            loop.close()
    stats.tcp_streams = len(streams)
    stats.exchanges = len(order)
    stats.unpaired_requests = sum(1 for x in order if x.status is None)
    return order, stats
