"""The truth's scan read from tshark's custom columns (``-T tabs``) instead of ``-T fields``:
the same rows, hence the same truth, and ``-T fields`` again from the first frame whose
columns cannot say the same (a comma that may be a value's own, a value cut at 2,047
bytes, an escape ``-T fields`` does not make).

Root-free: real tshark on the checked-in captures and on hand-written ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_http1_corpus import CASES, SERVER, Case, get, write_capture

from harness.groundtruth import extract as E
from harness.groundtruth.extract import extract_exchanges
from harness.groundtruth.tshark import AGG, SEP, TsharkStream, column_format, decode_as

FIX = Path(__file__).parent / "fixtures"
HTTP1 = FIX / "groundtruth" / "http1.pcapng"
HTTP1_PORT = json.loads((FIX / "groundtruth" / "http1.meta.json").read_text())["server_port"]
CAPTURES = [(HTTP1, HTTP1_PORT), (FIX / "replay" / "wrk-keepalive-41341.pcapng", 41341),
            (FIX / "replay" / "pipelined-54545.pcapng", 54545)]  # fmt: skip


def _response(phrase: str, *extra: str) -> bytes:
    head = [f"HTTP/1.1 200 {phrase}", *extra, "Content-Length: 2"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + b"hi"


# what the columns cannot print as -T fields does, each in the second request (the first
# exchange is read from the columns)
AWKWARD = {
    "backslash-in-a-header": get("/b", "X-A: back\\slash"),
    "control-character-in-a-header": get("/b", "X-C: ctl\x01"),
    "lf-only-line-ends": get("/b", "X-L: 1").replace(b"\r\n", b"\n"),
    "header-block-over-2047-bytes": get("/b", "X-Long: " + "v" * 3000),
    "uri-over-2047-bytes": get("/" + "u" * 2100),
    "pipelined-uris-with-commas": get("/p,1") + get("/p,2"),
}


def _rows(pcap: Path, port: int) -> tuple[list[list[str]], list[list[str] | None]]:
    cols = E._FIELDS + E._PART_FIELDS
    base = decode_as([port], [], None)
    fields = [*base, "-T", "fields", "-E", "occurrence=a", "-E", f"aggregator={AGG}",
              "-E", f"separator={SEP}", *[a for f in cols for a in ("-e", f)]]  # fmt: skip
    conv = E._Columns(cols)
    got = [conv.row(line) for line in
           TsharkStream(pcap, [*base, *column_format(E._column_fields(cols))])]  # fmt: skip
    return [line.split(SEP) for line in TsharkStream(pcap, fields)], got


def _same_truth(pcap: Path, port: int) -> str:
    xs, st = extract_exchanges(pcap, http1_ports=[port], h2c_ports=[])
    ys, su = extract_exchanges(pcap, http1_ports=[port], h2c_ports=[], columns=False)
    assert [x.to_dict() for x in xs] == [y.to_dict() for y in ys]
    assert su.tshark_output == "fields"
    a, b = st.to_dict(), su.to_dict()
    a.pop("tshark_output"), b.pop("tshark_output")
    assert a == b
    return st.tshark_output


@pytest.mark.parametrize("pcap,port", CAPTURES, ids=lambda v: getattr(v, "stem", str(v)))
def test_columns_give_the_fields_rows_or_say_they_cannot(pcap: Path, port: int) -> None:
    fields, columns = _rows(pcap, port)
    assert len(fields) == len(columns) > 100
    sure = [(f, c) for f, c in zip(fields, columns, strict=True) if c is not None]
    assert len(sure) >= 0.9 * len(fields)
    for f, c in sure:
        assert c == f


@pytest.mark.parametrize("pcap,port", CAPTURES, ids=lambda v: getattr(v, "stem", str(v)))
def test_the_truth_is_the_same_from_columns_and_from_fields(pcap: Path, port: int) -> None:
    _same_truth(pcap, port)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_the_corpus_truth_is_the_same_from_columns(tmp_path: Path, case: Case) -> None:
    pcap = tmp_path / "c.pcap"
    write_capture(pcap, case)
    _same_truth(pcap, SERVER[1])


@pytest.mark.parametrize("name", AWKWARD)
def test_what_columns_cannot_print_is_read_as_fields_from_its_frame(
    tmp_path: Path, name: str
) -> None:
    pcap = tmp_path / "c.pcap"
    writes = [("c", get("/a")), ("s", _response("OK", "Date: Sun, 29 Nov 2026")),
              ("c", AWKWARD[name]), ("s", _response("OK"))]  # fmt: skip
    if name == "pipelined-uris-with-commas":
        writes.append(("s", _response("OK")))
    write_capture(pcap, Case(name, writes, []))
    fields, columns = _rows(pcap, SERVER[1])
    k = columns.index(None)
    assert fields[k][E._METHOD] and fields[k][E._URI] != "/a"  # the second request's frame
    assert columns[:k] == fields[:k]
    how = _same_truth(pcap, SERVER[1])
    assert how.startswith(f"fields from frame {k + 1} ("), how


def test_joined_occurrences_and_severities_become_the_fields_form() -> None:
    cols = E._FIELDS
    conv = E._Columns(cols)
    line = [""] * (len(cols) + E._MSG_COLUMNS - 1)
    line[E._NUM], line[E._SEGS], line[E._CODE] = "9", "4,5,9", "200"
    line[E._RESP_LINES] = "Date: Sun, 29 Nov\\r\\n,Server: x\\r\\n"
    line[E._SEV], line[E._MSG], line[len(cols)] = '"Chat","Warning"', "HTTP/1.1 200 OK\\r\\n", "w,1"
    row = conv.row("\t".join(line))
    assert row is not None and len(row) == len(cols)
    assert row[E._SEGS] == AGG.join("459")
    assert row[E._RESP_LINES] == f"Date: Sun, 29 Nov\\r\\n{AGG}Server: x\\r\\n"
    assert row[E._SEV] == f"2097152{AGG}6291456"
    assert row[E._MSG] == f"HTTP/1.1 200 OK\\r\\n{AGG}w,1"
    line[E._SEV] = '"Loud"'
    assert conv.row("\t".join(line)) is None and "severity" in conv.why
