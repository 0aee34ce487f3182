"""Ground truth: packet capture on loopback and its decode into Exchange records by Wireshark."""

from harness.groundtruth.capture import Dumpcap, bpf_filter, mono_offset_ns, read_isb_stats
from harness.groundtruth.extract import TruthStats, extract_exchanges
from harness.groundtruth.match import match_workload

__all__ = [
    "Dumpcap",
    "TruthStats",
    "bpf_filter",
    "extract_exchanges",
    "match_workload",
    "mono_offset_ns",
    "read_isb_stats",
]
