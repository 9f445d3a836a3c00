"""The tests' own TCP proxy (tests/tcpproxy.py) leaves nothing behind when it refuses."""

from __future__ import annotations

import socket
import threading
from typing import Any

from tests.tcpproxy import TcpProxy


def test_refusing_while_connections_arrive_leaves_no_socket_behind() -> None:
    # A connection accepted in the loop's turn in which the proxy stopped listening had its
    # transport made after the server closed: asyncio logged "Error on transport creation"
    # and left the socket to the collector, a ResourceWarning in whichever test ran then.
    with socket.create_server(("127.0.0.1", 0)) as gone:
        upstream_port = gone.getsockname()[1]  # closed below: the upstream refuses
    proxy = TcpProxy("127.0.0.1", upstream_port)
    proxy.start()
    problems: list[str] = []

    def record(_loop: Any, context: dict[str, Any]) -> None:
        problems.append(str(context.get("message")))

    proxy._loop.call_soon_threadsafe(proxy._loop.set_exception_handler, record)
    stop = threading.Event()

    def connect_and_go() -> None:
        while not stop.is_set():
            try:
                socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()
            except OSError:
                pass  # refused while the proxy does not listen

    clients = [threading.Thread(target=connect_and_go) for _ in range(4)]
    for client in clients:
        client.start()
    try:
        for _ in range(300):
            proxy.refuse(cut=False)
            proxy.restore()
    finally:
        stop.set()
        for client in clients:
            client.join()
        proxy.close()
    assert problems == []
