"""HTTP/1.x: sans-I/O message parser (parse) and request/response stitcher (stitch)."""

from harness.protocols.http1.parse import (
    BodyDataReceived,
    Event,
    Http1Parser,
    Http1ParseStats,
    Http1UsageError,
    InformationalResponseParsed,
    MessageCompleted,
    MessageLost,
    RequestHeadersParsed,
    ResponseHeadersParsed,
    Resynchronised,
)
from harness.protocols.http1.stitch import Http1Stats, stitch_http1

__all__ = [
    "BodyDataReceived",
    "Event",
    "Http1ParseStats",
    "Http1Parser",
    "Http1Stats",
    "Http1UsageError",
    "InformationalResponseParsed",
    "MessageCompleted",
    "MessageLost",
    "RequestHeadersParsed",
    "ResponseHeadersParsed",
    "Resynchronised",
    "stitch_http1",
]
