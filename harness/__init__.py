"""probebench: kernel-side vs uprobe eBPF observation of HTTP and gRPC, scored against Wireshark."""

__version__ = "0.1.0"
