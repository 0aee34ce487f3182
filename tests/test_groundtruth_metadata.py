"""The Wireshark truth holds every header of a block of any size: a block over 16 KiB is
sent as HEADERS + CONTINUATION frames, which Wireshark decodes fragment by fragment; the
truth joins them (the issue found it held 100 of 206 headers of a 40 KiB block)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from go_grpc_capture import capture_go_grpc

from harness.groundtruth import extract_exchanges

pytestmark = pytest.mark.capture


def test_a_40_kib_header_block_is_whole_in_the_truth(tmp_path: Path) -> None:
    md, wl, pcap = tmp_path / "md.jsonl", tmp_path / "w.jsonl", tmp_path / "c.pcapng"
    sets = [{"x-case": f"wide{i}", **{f"x-w{j:03d}": f"{i}" * 200 for j in range(200)},
             "x-dup": "a", "x-blob-bin": "AAECAwQ="} for i in range(6)]  # fmt: skip
    md.write_text("".join(json.dumps(s) + "\n" for s in sets))
    port = capture_go_grpc(pcap, ["--exchanges", "6", "--workload", str(wl),
                                  "--metadata-file", str(md), "--mode", "unary"])  # fmt: skip
    xs, stats = extract_exchanges(pcap, http1_ports=[], h2c_ports=[port])
    sent = {r["req_headers"]["x-case"]: r["req_headers"] for r in
            map(json.loads, wl.read_text().splitlines())}  # fmt: skip
    assert len(xs) == 6
    for x in xs:
        want = sent[x.req_headers["x-case"]]
        got = {k: v for k, v in x.req_headers.items() if k.startswith("x-")}
        assert len(got) == 208 and got == want  # 200 + x-case, x-dup, -bin and the plan's 5
        assert x.degraded == []
        assert x.grpc_status is not None
    assert "HTTP/2 header block without END_HEADERS" not in stats.warnings
