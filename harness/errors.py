"""The one exception tree every probebench error hangs from."""

from __future__ import annotations


class ProbebenchError(Exception):
    """Root of every error probebench raises on purpose."""


class CapabilityError(ProbebenchError):
    """The machine lacks something a step needs (root, BPF, tracefs, tshark...)."""


class RunDirError(ProbebenchError):
    """A run directory or one of its files is missing, corrupt or of an unknown version."""


class UnknownVersionError(RunDirError):
    """A result file carries a schema version this probebench does not read."""


class CaptureError(ProbebenchError):
    """Packet capture or its Wireshark decode failed."""


class TargetError(ProbebenchError):
    """A workload server or client failed to start, died, or misbehaved."""


class PortInUseError(TargetError):
    """A port the run needs is already bound by somebody else."""


class CollectorError(ProbebenchError):
    """A collector could not compile, attach or record."""


class UnsupportedTargetError(CollectorError):
    """A uprobe target lacks a symbol or DWARF member the collector needs."""


class ProtocolError(ProbebenchError):
    """Raised by the sans-I/O protocol parsers on bytes they cannot make sense of."""
