"""A dumpcap process on loopback that records the ground-truth pcapng and reports its own drops."""

from __future__ import annotations

import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from harness.errors import CaptureError
from harness.model import waited
from harness.procfs import die_with_parent

_SUMMARY = re.compile(
    r"Packets received/dropped on interface '(?P<iface>[^']*)': (?P<recv>\d+)/(?P<drop>\d+)"
    r"(?: \(pcap:(?P<pcap>\d+)/dumpcap:(?P<dumpcap>\d+)/flushed:(?P<flushed>\d+)"
    r"/ps_ifdrop:(?P<ps_ifdrop>\d+)\))?"
)
_CAPTURED = re.compile(r"Packets captured: (\d+)")


def bpf_filter(ports: list[int], sentinel_port: int | None = None) -> str:
    """TCP on any of ``ports`` (either direction), all TCP when none, plus the stop sentinel."""
    for p in ports:
        if not 0 < p < 65536:
            raise CaptureError(f"{p} is not a TCP port number")
    tcp = "tcp"
    if ports:
        tcp += " and (" + " or ".join(f"port {p}" for p in sorted(set(ports))) + ")"
    if sentinel_port is None:
        return tcp
    return f"({tcp}) or (udp and dst host 127.0.0.1 and dst port {sentinel_port})"


def mono_offset_ns(samples: int = 5) -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC, from the tightest of a few bracketed reads."""
    best: tuple[int, int] | None = None
    for _ in range(samples):
        m0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        r = time.clock_gettime_ns(time.CLOCK_REALTIME)
        m1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        if best is None or m1 - m0 < best[0]:
            best = (m1 - m0, r - (m0 + m1) // 2)
    assert best is not None
    return best[1]


class Dumpcap:
    """``with Dumpcap(path, ports) as cap: ...`` captures TCP on ``ports`` on ``interface``.

    Entering returns only once dumpcap has opened the interface and the file.
    Leaving first waits until a UDP sentinel datagram sent after the body shows
    up in the file (on loopback; elsewhere it waits ``settle`` seconds), because
    dumpcap drops what libpcap still buffers when it is stopped. It then stops
    dumpcap with SIGTERM (SIGKILL after ``stop_timeout``), reaps it and fills
    ``stats``: the dict stored as run.json's ``capture``, with dumpcap's own
    received/dropped counts.
    """

    def __init__(
        self,
        path: Path,
        ports: list[int],
        *,
        interface: str = "lo",
        # a busy port moves hundreds of MB/s on loopback: with 64 MiB dumpcap dropped 40%
        # of an untraced wrk run's packets on a loaded machine
        buffer_mib: int = 256,
        ready_timeout: float = 10.0,
        stop_timeout: float = 10.0,
        settle: float = 1.0,
        dumpcap: str = "dumpcap",
    ) -> None:
        self.path = Path(path)
        self.ports = list(ports)
        self.interface = interface
        self.buffer_mib = buffer_mib
        self.ready_timeout = waited(ready_timeout)
        self.stop_timeout = stop_timeout
        self.settle = settle
        self.dumpcap = dumpcap
        self.filter = bpf_filter(self.ports)
        self.stats: dict[str, Any] = {}
        self._proc: subprocess.Popen[str] | None = None
        self._lines: list[str] = []
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None
        self._sentinel: socket.socket | None = None
        self._token = b""

    @property
    def pid(self) -> int | None:
        """dumpcap's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        exe = shutil.which(self.dumpcap)
        if exe is None:
            raise CaptureError(f"{self.dumpcap} is not installed (Debian: apt-get install tshark)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)
        if self.interface == "lo":
            # A bound receiver, so the sentinel is ours and draws no ICMP unreachable.
            self._sentinel = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self._sentinel.bind(("127.0.0.1", 0))
            self._token = b"probebench-sentinel-" + secrets.token_hex(8).encode()
            self.filter = bpf_filter(self.ports, self._sentinel.getsockname()[1])
        args = [
            exe, "-i", self.interface, "-f", self.filter, "-B", str(self.buffer_mib),
            "-w", str(self.path), "-q",
        ]
        try:
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, text=True, errors="replace",
                preexec_fn=die_with_parent,  # a SIGKILLed runner must not leave dumpcap behind
            )
        except OSError as e:
            self._close_sentinel()
            raise CaptureError(f"could not run {exe}: {e}") from e
        self._reader = threading.Thread(
            target=self._read_stderr, name="dumpcap-stderr", daemon=True
        )
        self._reader.start()
        self.stats = {
            "tool": "dumpcap",
            "interface": self.interface,
            "filter": self.filter,
            "file": str(self.path),
            "mono_offset_ns": mono_offset_ns(),
            "start_realtime_ns": time.clock_gettime_ns(time.CLOCK_REALTIME),
        }
        deadline = time.monotonic() + self.ready_timeout
        while not self._ready.wait(0.02):
            if self._proc.poll() is not None:
                self._reader.join(timeout=2)
                self._proc = None
                self._close_sentinel()
                raise CaptureError(
                    f"dumpcap could not capture on {self.interface!r}: {self._reason()}"
                )
            if time.monotonic() > deadline:
                self._kill()
                raise CaptureError(
                    f"dumpcap did not start capturing on {self.interface!r} within "
                    f"{self.ready_timeout:g} s: {self._reason()}"
                )

    def stop(self) -> dict[str, Any]:
        """Stop and reap dumpcap; return its statistics. Raises CaptureError if it failed."""
        proc = self._proc
        if proc is None:
            return self.stats
        self._proc = None
        early = proc.poll() is not None  # stopped by somebody else: the tail is missing
        if not early:
            self.stats["sentinel_seen"] = self._flush()
        killed = False
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # dumpcap closes the file and prints its summary
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                killed = True
        if self._reader is not None:
            self._reader.join(timeout=5)
        self._close_sentinel()
        self.stats.update(self._summary())
        self.stats["stop_realtime_ns"] = time.clock_gettime_ns(time.CLOCK_REALTIME)
        self.stats["returncode"] = proc.returncode
        self.stats["killed"] = killed
        self.stats["exited_early"] = early
        self.stats["isb"] = read_isb_stats(self.path) if self.path.exists() else []
        if killed:
            raise CaptureError(
                f"dumpcap ignored SIGTERM for {self.stop_timeout:g} s and was killed"
            )
        if early:
            raise CaptureError(
                f"dumpcap stopped before the capture was over (exit code {proc.returncode}, "
                f"{self.stats.get('packets_captured')} packets): {self._reason(summary=True)}"
            )
        if proc.returncode != 0:
            raise CaptureError(f"dumpcap exited with code {proc.returncode}: {self._reason()}")
        if self.stats.get("packets_dropped") is None:
            raise CaptureError("dumpcap exited without its received/dropped summary")
        return self.stats

    def __enter__(self) -> Dumpcap:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.stop()
            return
        try:  # the body's exception matters more than a failed stop
            self.stop()
        except CaptureError as e:
            self.stats["stop_error"] = str(e)

    # -- helpers ---------------------------------------------------------------

    def _read_stderr(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stderr is not None
        for line in proc.stderr:
            line = line.rstrip("\n")
            self._lines.append(line)
            if line.startswith("File:"):  # printed once the device and file are open
                self._ready.set()
        proc.stderr.close()

    def _flush(self) -> bool:
        """Wait until everything sent so far is in the file; True if the sentinel proved it."""
        if self._sentinel is None:
            time.sleep(self.settle)
            return False
        port = self._sentinel.getsockname()[1]
        deadline = time.monotonic() + self.stop_timeout
        offset = 0
        tail = b""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
            while time.monotonic() < deadline:
                tx.sendto(self._token, ("127.0.0.1", port))
                time.sleep(0.05)
                try:
                    with self.path.open("rb") as f:
                        f.seek(offset)
                        new = f.read()
                except OSError:
                    continue
                offset += len(new)
                if self._token in tail + new:
                    return True
                tail = new[-len(self._token):]
        return False

    def _close_sentinel(self) -> None:
        if self._sentinel is not None:
            self._sentinel.close()
            self._sentinel = None

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None
        if self._reader is not None:
            self._reader.join(timeout=5)
        self._close_sentinel()

    def _reason(self, *, summary: bool = False) -> str:
        skip: tuple[str, ...] = ("Running as user", "Capturing on", "File:")
        if not summary:
            skip += ("Packets captured", "Packets received")
        lines = [ln.strip() for ln in self._lines if ln.strip() and not ln.startswith(skip)]
        if summary:
            lines = lines[-1:]
        return lines[0].removeprefix("dumpcap: ") if lines else "no message on stderr"

    def _summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "packets_captured": None, "packets_received": None, "packets_dropped": None,
        }
        for line in self._lines:
            if m := _CAPTURED.search(line):
                out["packets_captured"] = int(m.group(1))
            if m := _SUMMARY.search(line):
                out["packets_received"] = int(m.group("recv"))
                out["packets_dropped"] = int(m.group("drop"))
                if m.group("pcap") is not None:
                    out["drops"] = {
                        k: int(m.group(k)) for k in ("pcap", "dumpcap", "flushed", "ps_ifdrop")
                    }
        return out


# pcapng interface statistics options (RFC draft, section 4.6)
_ISB_OPTIONS = {4: "ifrecv", 5: "ifdrop", 6: "filteraccept", 7: "osdrop", 8: "usrdeliv"}


def read_isb_stats(path: Path) -> list[dict[str, int]]:
    """The last Interface Statistics Block per interface of a pcapng file (drop counters)."""
    last: dict[int, dict[str, int]] = {}
    try:
        with path.open("rb") as f:
            endian = "<"
            while head := f.read(8):
                if len(head) < 8:
                    break
                btype, blen = struct.unpack(endian + "II", head)
                if btype == 0x0A0D0D0A:  # section header: byte order may change here
                    magic = f.read(4)
                    endian = "<" if magic == b"\x4d\x3c\x2b\x1a" else ">"
                    blen = struct.unpack(endian + "I", head[4:])[0]
                    f.seek(blen - 12, 1)
                    continue
                if blen < 12 or blen % 4:
                    break  # truncated or not pcapng: what was read so far stands
                if btype != 5:  # not an Interface Statistics Block
                    f.seek(blen - 8, 1)
                    continue
                body = f.read(blen - 8)
                if len(body) < blen - 8:
                    break
                iface = struct.unpack(endian + "I", body[:4])[0]
                rec: dict[str, int] = {"interface_id": iface}
                off = 12
                while off + 4 <= len(body) - 4:
                    code, olen = struct.unpack(endian + "HH", body[off:off + 4])
                    if code == 0:
                        break
                    if code in _ISB_OPTIONS and olen == 8:
                        rec[_ISB_OPTIONS[code]] = struct.unpack(
                            endian + "Q", body[off + 4:off + 12]
                        )[0]
                    off += 4 + olen + (-olen % 4)
                last[iface] = rec
    except OSError as e:
        raise CaptureError(f"could not read {path}: {e}") from e
    return [last[k] for k in sorted(last)]
