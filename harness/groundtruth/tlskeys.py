"""TLS session secrets for the truth: the targets' NSS key logs merged into one file for
tshark, and which TLS connections of the capture the key log can decrypt."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.groundtruth.tshark import REASSEMBLE_OUT_OF_ORDER, SEP, run_tshark

# The labels that let Wireshark decrypt application data (TLS 1.2, TLS 1.3)
APP_SECRETS = frozenset({"CLIENT_RANDOM", "CLIENT_TRAFFIC_SECRET_0"})


@dataclass
class KeylogStats:
    files: list[str] = field(default_factory=list)  # key logs found and merged
    secrets: int = 0  # distinct lines merged
    sessions: int = 0  # client randoms with application-data secrets
    bad_lines: int = 0  # lines not in NSS key log format
    handshakes: int = 0  # ClientHellos in the capture
    handshakes_without_secrets: int = 0  # ... whose client random no key log has

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def merge_keylogs(paths: list[Path], out: Path) -> tuple[KeylogStats, set[str]]:
    """Concatenate the key logs that exist into ``out``, each valid line once; returns the
    stats and the client randoms (hex) whose application data the merged log decrypts."""
    st = KeylogStats()
    seen: set[str] = set()
    sessions: set[str] = set()
    lines: list[str] = []
    for p in paths:
        if not p.is_file():
            continue
        st.files.append(p.name)
        for line in p.read_text(errors="replace").splitlines():
            parts = line.split()
            if not parts or line.startswith("#"):
                continue
            if len(parts) != 3 or not all(_hex(x) for x in parts[1:]):
                st.bad_lines += 1
                continue
            if line in seen:
                continue
            seen.add(line)
            lines.append(line)
            if parts[0] in APP_SECRETS:
                sessions.add(parts[1].lower())
    out.write_text("".join(f"{ln}\n" for ln in lines))
    out.chmod(0o600)
    st.secrets, st.sessions = len(lines), len(sessions)
    return st, sessions


def _hex(s: str) -> bool:
    try:
        int(s, 16)
    except ValueError:
        return False
    return True


def check_handshakes(
    pcap: Path, ports: list[int], randoms: set[str], st: KeylogStats
) -> set[int]:
    """Count the capture's ClientHellos and those the key log cannot decrypt; returns the
    tcp.stream numbers of the latter (their exchanges are unknown to the truth)."""
    if not ports:
        return set()
    args = list(REASSEMBLE_OUT_OF_ORDER)
    for p in sorted(set(ports)):
        args += ["-d", f"tcp.port=={p},tls"]
    args += ["-Y", "tls.handshake.type == 1", "-T", "fields", "-E", f"separator={SEP}",
             "-e", "tcp.stream", "-e", "tls.handshake.random"]  # fmt: skip
    out = run_tshark(pcap, args)
    blind: set[int] = set()
    for line in out.stdout.splitlines():
        stream, _, rnd = line.partition(SEP)
        if not stream:
            continue
        st.handshakes += 1
        if rnd.replace(":", "").lower() not in randoms:
            st.handshakes_without_secrets += 1
            blind.add(int(stream))
    return blind
