"""The typed errors the HTTP/2 parsers raise; every one is a harness ProtocolError."""

from __future__ import annotations

from harness.errors import ProtocolError


class Http2Error(ProtocolError):
    """Bytes that cannot be HTTP/2 as the parsers understand it."""


class FrameError(Http2Error):
    """Input that the frame parser cannot accept (e.g. a segment shorter than its own data)."""


class HpackDecodeError(Http2Error):
    """A header block that is malformed HPACK (bad integer, string, Huffman code or index)."""
