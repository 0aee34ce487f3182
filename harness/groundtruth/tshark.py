"""Running tshark on a capture file, with its failures turned into CaptureError."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
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


def decode_as(http1_ports: list[int], h2c_ports: list[int]) -> list[str]:
    """``-d`` options that force the HTTP dissectors onto the scenario's ports."""
    both = set(http1_ports) & set(h2c_ports)
    if both:
        raise CaptureError(f"ports {sorted(both)} cannot be both HTTP/1 and h2c")
    args: list[str] = []
    for p in sorted(set(http1_ports)):
        args += ["-d", f"tcp.port=={p},http"]
    for p in sorted(set(h2c_ports)):
        args += ["-d", f"tcp.port=={p},http2"]
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


def unescape(text: str) -> str:
    """Undo the C-style escapes tshark's ``-T fields`` applies to string fields."""
    if "\\" not in text:
        return text
    def one(m: re.Match[str]) -> str:
        s = m.group(1)
        return chr(int(s[1:], 16)) if s[0] == "x" else _SIMPLE[s]
    return _ESCAPE.sub(one, text)
