"""Running tshark on a capture file, with its failures turned into CaptureError."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import CaptureError

# Control characters cannot occur in a dissected header or URI, so they split safely.
SEP = "\x1f"
AGG = "\x1e"

_CUT_SHORT = "cut short in the middle of a packet"
_NOISE = ("Running as user",)
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|[\\rnt\"abfv])")
_SIMPLE = {"\\": "\\", "r": "\r", "n": "\n", "t": "\t", '"': '"', "a": "\a", "b": "\b",
           "f": "\f", "v": "\v"}


@dataclass(slots=True)
class TsharkOutput:
    stdout: str
    truncated: bool  # the file ended in the middle of a packet; stdout holds what was read
    stderr: list[str]


def tshark_path() -> str:
    exe = shutil.which("tshark")
    if exe is None:
        raise CaptureError("tshark is not installed (Debian: apt-get install tshark)")
    return exe


def check_capture_file(pcap: Path) -> None:
    if not pcap.is_file():
        raise CaptureError(f"capture file {pcap} does not exist")
    if pcap.stat().st_size == 0:
        raise CaptureError(f"capture file {pcap} is empty")


# On loopback with two CPUs dumpcap can record a later segment of a stream before an
# earlier one; without this, Wireshark takes the earlier for a retransmission and loses
# the HTTP/2 frame they split, and the rest of the connection with it.
REASSEMBLE_OUT_OF_ORDER = ["-o", "tcp.reassemble_out_of_order:TRUE"]
# TCP per-packet state no field of ours reads (time deltas, bytes in flight): tshark keeps
# it for every packet of the file, and its memory grows with the capture
LEANER_TCP = ["-o", "tcp.calculate_timestamps:FALSE", "-o", "tcp.track_bytes_in_flight:FALSE"]


def column_format(fields: list[str] | tuple[str, ...]) -> list[str]:
    """``-T tabs`` output of these fields, one custom column each (``FIELD`` or
    ``FIELD:N``, the N-th occurrence only), tab-separated; see extract._Columns for what
    it prints differently from ``-T fields``.

    A summary line needs no visible protocol tree: ``-T fields`` makes tshark build every
    item's label text and walk the whole tree for each packet, which on a wrk capture is
    40% of its CPU (2.3 against 3.9 CPU-s a 100k packets)."""
    cols = []
    for i, f in enumerate(fields):
        name, _, occurrence = f.partition(":")
        cols += [f'"{i}"', f'"%Cus:{name}:{occurrence or 0}:U"']
    return ["-T", "tabs", "-o", "gui.column.format:" + ",".join(cols)]


def decode_as(
    http1_ports: list[int], h2c_ports: list[int], tls_keylog: Path | None = None, *,
    out_of_order: bool = True,
) -> list[str]:
    """The options every decode uses: out-of-order TCP reassembly, and ``-d`` options that
    force the HTTP dissectors onto the scenario's ports. With a TLS key log (NSS format)
    the ports are TLS, decrypted with it, and the HTTP dissectors run on what is inside."""
    both = set(http1_ports) & set(h2c_ports)
    if both:
        raise CaptureError(f"ports {sorted(both)} cannot be both HTTP/1 and h2c")
    # On a capture with dropped packets, out-of-order reassembly waits for segments that
    # never come: everything after a gap on that connection is held and re-dissected, so
    # the decode slows down more and more (a 913 MB wrk capture with 40% dropped: 200 CPU-s
    # and not done) and loses the messages behind the gap (20% fewer on a slice of it)
    args: list[str] = [*LEANER_TCP, *(REASSEMBLE_OUT_OF_ORDER if out_of_order else [])]
    if tls_keylog is not None:
        # ',' and ':' would split the -o value; the run directory's path has neither
        if any(c in str(tls_keylog) for c in ",:"):
            raise CaptureError(f"key log path {tls_keylog} must not contain ',' or ':'")
        args += ["-o", f"tls.keylog_file:{tls_keylog}"]
    for ports, proto in ((http1_ports, "http"), (h2c_ports, "http2")):
        for p in sorted(set(ports)):
            if tls_keylog is None:
                args += ["-d", f"tcp.port=={p},{proto}"]
            elif proto == "http":
                args += ["-d", f"tcp.port=={p},tls", "-d", f"tls.port=={p},http"]
            else:  # HTTP/2 has no tls.port entry: Wireshark follows the ALPN "h2"
                args += ["-d", f"tcp.port=={p},tls"]
    return args


def run_tshark(pcap: Path, args: list[str], *, timeout: float = 3600) -> TsharkOutput:
    """``tshark -n -r PCAP ARGS``; a file tshark cannot read at all raises CaptureError."""
    check_capture_file(pcap)
    cmd = [tshark_path(), "-n", "-r", str(pcap), *args]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, errors="surrogateescape", timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise CaptureError(f"tshark took more than {timeout:g} s on {pcap}") from e
    except OSError as e:
        raise CaptureError(f"could not run tshark: {e}") from e
    stderr = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith(_NOISE)]
    truncated = any(_CUT_SHORT in ln for ln in stderr)
    if proc.returncode != 0 and not truncated:
        reason = stderr[0] if stderr else f"exit code {proc.returncode}"
        raise CaptureError(f"tshark could not read {pcap}: {reason.removeprefix('tshark: ')}")
    return TsharkOutput(proc.stdout, truncated, stderr)


@dataclass(slots=True)
class TsharkStream:
    """``tshark -n -r PCAP ARGS`` whose stdout lines are parsed while tshark still decodes.

    On two cores this hides the Python parsing behind tshark's dissection. Iterate
    once; after the last line, ``truncated`` and ``stderr`` are set, and a file
    tshark could not read at all raises CaptureError.
    """

    pcap: Path
    args: list[str]
    timeout: float = 3600
    # byte ranges of ``pcap`` given to tshark on its standard input instead of the whole
    # file (a part of a capture: its header blocks, then a run of packets)
    ranges: tuple[tuple[int, int], ...] | None = None
    truncated: bool = False
    stderr: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[str]:
        check_capture_file(self.pcap)
        src = "-" if self.ranges is not None else str(self.pcap)
        cmd = [tshark_path(), "-n", "-r", src, *self.args]
        try:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL if self.ranges is None else subprocess.PIPE,
            )  # fmt: skip
        except OSError as e:
            raise CaptureError(f"could not run tshark: {e}") from e
        assert proc.stdout is not None and proc.stderr is not None
        err = proc.stderr
        chunks: list[bytes] = []
        reader = threading.Thread(target=lambda: chunks.append(err.read()), daemon=True)
        reader.start()
        feeder = None
        if self.ranges is not None:
            feeder = threading.Thread(target=_feed, args=(self.pcap, self.ranges, proc),
                                      daemon=True)  # fmt: skip
            feeder.start()
        timer = threading.Timer(self.timeout, proc.kill)  # a hung tshark must not hang us
        timer.start()
        try:
            # newline="\n": the \x1c-\x1e and \x85 that split str.splitlines() stay inside
            out = io.TextIOWrapper(proc.stdout, encoding="utf-8", errors="surrogateescape",
                                   newline="\n")
            for line in out:
                yield line.rstrip("\n")
            rc = proc.wait()
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            reader.join(timeout=5)
            if feeder is not None:
                feeder.join(timeout=5)
            proc.stdout.close()
            err.close()
        text = b"".join(chunks).decode("utf-8", "replace")
        self.stderr = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(_NOISE)]
        self.truncated = any(_CUT_SHORT in ln for ln in self.stderr)
        if rc != 0 and not self.truncated:
            if rc < 0:
                raise CaptureError(f"tshark was killed (signal {-rc}) while reading {self.pcap}")
            reason = self.stderr[0] if self.stderr else f"exit code {rc}"
            raise CaptureError(
                f"tshark could not read {self.pcap}: {reason.removeprefix('tshark: ')}"
            )


def _feed(pcap: Path, ranges: tuple[tuple[int, int], ...], proc: subprocess.Popen[bytes]) -> None:
    """Copy byte ranges of ``pcap`` to tshark's standard input (in the kernel: sendfile),
    then close it; a tshark that stopped reading ends the copy."""
    assert proc.stdin is not None
    out = proc.stdin
    try:
        with open(pcap, "rb") as f:
            for start, end in ranges:
                while start < end:
                    sent = os.sendfile(out.fileno(), f.fileno(), start, min(end - start, 1 << 24))
                    if sent == 0:
                        break
                    start += sent
    except OSError:
        pass  # tshark ended early (it reports why) or was killed
    finally:
        with contextlib.suppress(OSError):
            out.close()


def unescape(text: str) -> str:
    """Undo the C-style escapes tshark's ``-T fields`` applies to string fields."""
    if "\\" not in text:
        return text
    def one(m: re.Match[str]) -> str:
        s = m.group(1)
        return chr(int(s[1:], 16)) if s[0] == "x" else _SIMPLE[s]
    return _ESCAPE.sub(one, text)
