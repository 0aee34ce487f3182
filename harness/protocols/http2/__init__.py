"""HTTP/2 and gRPC as a kernel-side collector sees them: frames, tolerant HPACK, stitching."""

from harness.protocols.http2.errors import FrameError, HpackDecodeError, Http2Error
from harness.protocols.http2.frames import FrameParsed, FrameParser, FrameStats
from harness.protocols.http2.hpack import DecodedField, HpackDecoder, HpackStats
from harness.protocols.http2.stitch import Http2Stats, orient, stitch_http2

__all__ = [
    "DecodedField",
    "FrameError",
    "FrameParsed",
    "FrameParser",
    "FrameStats",
    "HpackDecodeError",
    "HpackDecoder",
    "HpackStats",
    "Http2Error",
    "Http2Stats",
    "orient",
    "stitch_http2",
]
