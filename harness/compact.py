"""One copy of each repeated header set and string among many Exchanges.

A busy recording repeats the same headers in every exchange (an nginx response's eight
headers, the same Host and User-Agent): held per exchange they were most of a replay's
memory, some 3 KB an exchange. Exchanges are only read once decoded and stitched, so
equal header dicts can be one shared dict. Pickling (the truth worker's answer) then
sends each shared dict once too.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from harness.model import Exchange

_SEEN = 1024  # dicts remembered by identity; few, so as not to keep the unshared alive


class Sharer:
    """Replaces equal header dicts and strings of the exchanges it is given by one object.

    Call it once an exchange will no longer change: the shared dicts must not be mutated."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self._dicts: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
        self._max = max_entries  # unique header sets (e.g. a Date header per second)
        # dicts already seen (a stitcher shares one among a connection's equal header sets):
        # id -> (that dict, kept so the id stays its own, its shared copy)
        self._seen: dict[int, tuple[dict[str, str], dict[str, str]]] = {}

    def _dict(self, d: dict[str, str]) -> dict[str, str]:
        if not d:
            return d
        seen = self._seen.get(id(d))
        if seen is not None and seen[0] is d:
            return seen[1]
        if len(self._seen) >= _SEEN:
            self._seen.clear()
        shared = self._share(d)
        self._seen[id(d)] = (d, shared)
        return shared

    def _share(self, d: dict[str, str]) -> dict[str, str]:
        key = tuple(d.items())
        got = self._dicts.get(key)
        if got is not None:
            return got
        if len(self._dicts) < self._max:
            shared = {sys.intern(k): sys.intern(v) for k, v in key}
            self._dicts[key] = shared
            return shared
        return d

    def __call__(self, exchanges: Iterable[Exchange]) -> None:
        # the strings shared: client_ip, server_ip, method, path, authority, protocol, each
        # read by its name (a getattr/setattr loop over their names took 1.6x as long, and
        # every exchange of a replay passes here: a soak's millions)
        intern, share = sys.intern, self._dict
        for x in exchanges:
            if d := x.req_headers:  # (an empty dict is kept as it is)
                x.req_headers = share(d)
            if d := x.resp_headers:
                x.resp_headers = share(d)
            if d := x.trailers:
                x.trailers = share(d)
            if type(v := x.client_ip) is str:
                x.client_ip = intern(v)
            if type(v := x.server_ip) is str:
                x.server_ip = intern(v)
            if type(v := x.method) is str:
                x.method = intern(v)
            if type(v := x.path) is str:
                x.path = intern(v)
            if type(v := x.authority) is str:
                x.authority = intern(v)
            if type(v := x.protocol) is str:
                x.protocol = intern(v)
