"""Sharer: equal header sets and repeated strings of many exchanges become one object."""

from __future__ import annotations

from harness.compact import Sharer
from harness.model import Exchange


def _x(path: str, headers: dict[str, str]) -> Exchange:
    # strings built at run time: equal, but distinct objects until shared
    return Exchange(source="kprobe", side="server", protocol="".join(["http/", "1.1"]),
                    client_ip="".join(["127.0.", "0.1"]), server_ip="".join(["127.0.", "0.2"]),
                    method="".join(["G", "ET"]), path="".join(["/", path]),
                    req_headers=headers, resp_headers={}, authority=None)  # fmt: skip


def test_equal_headers_and_strings_become_one_object_and_empty_dicts_stay() -> None:
    a = _x("index.html", {"host": "h", "x-id": "1"})
    b = _x("index.html", {"host": "h", "x-id": "1"})
    c = _x("other", {"host": "h", "x-id": "2"})
    assert a.path is not b.path and a.req_headers is not b.req_headers
    empty = b.resp_headers
    Sharer()([a, b, c])
    assert a.req_headers is b.req_headers and a.req_headers == {"host": "h", "x-id": "1"}
    assert c.req_headers is not a.req_headers and c.req_headers["x-id"] == "2"
    for name in ("path", "method", "client_ip", "server_ip", "protocol"):
        assert getattr(a, name) is getattr(b, name), name
    assert c.path == "/other" and c.method is a.method
    assert b.resp_headers is empty and b.authority is None
