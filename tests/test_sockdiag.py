"""The sock_diag look-up on real loopback sockets (no root needed)."""

from __future__ import annotations

import os
import socket

from harness.collectors import sockdiag


def test_both_ends_of_a_connection_resolve_and_a_listener_does_not() -> None:
    me = os.getpid()
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as c, srv.accept()[0] as s:
            fds = {"client": c.fileno(), "server": s.fileno(), "listener": srv.fileno()}
            got = sockdiag.lookup([(me, fd) for fd in fds.values()])
        gone = sockdiag.lookup([(me, fds["client"])])
    client, server = got[(me, fds["client"])], got[(me, fds["server"])]
    assert client is not None and server is not None
    assert (client.remote_port, server.local_port) == (port, port)
    assert (client.local_ip, client.local_port) == (server.remote_ip, server.remote_port)
    assert got[(me, fds["listener"])] is None  # no peer: only connections are listed
    assert gone == {(me, fds["client"]): None}  # closed: its fd names nothing now


def test_observe_counts_the_connections_a_service_already_holds() -> None:
    from harness.workflows.observe import _connections_on

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        assert _connections_on([port]) == 0  # a listener is no connection
        with (
            socket.create_connection(("127.0.0.1", port)), srv.accept()[0],
            socket.create_connection(("127.0.0.1", port)), srv.accept()[0],
        ):  # fmt: skip
            # each connection once (its server end), not its client end too
            assert _connections_on([port]) == 2
