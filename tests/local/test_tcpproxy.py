"""The fault proxy over real loopback sockets: it forwards, swallows, and resets."""

from __future__ import annotations

import asyncio

import pytest

from fairfeed.local.tcpproxy import TcpProxy


async def _echo_server() -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


def test_modes() -> None:
    async def main() -> None:
        server = await _echo_server()
        proxy = await TcpProxy("127.0.0.1", server.sockets[0].getsockname()[1]).start()
        r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
        w.write(b"hello")
        assert await asyncio.wait_for(r.readexactly(5), 5) == b"hello"
        proxy.set_mode("blackhole")
        w.write(b"lost")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.readexactly(4), 0.3)  # swallowed: no answer comes back
        proxy.set_mode("down")
        assert await asyncio.wait_for(r.read(), 5) == b""  # reset
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            r2, _w2 = await asyncio.open_connection("127.0.0.1", proxy.port)
            await asyncio.wait_for(r2.readexactly(1), 5)
        proxy.set_mode("pass")
        r3, w3 = await asyncio.open_connection("127.0.0.1", proxy.port)
        w3.write(b"again")
        assert await asyncio.wait_for(r3.readexactly(5), 5) == b"again"
        assert proxy.connections == 2
        with pytest.raises(ValueError, match="proxy mode"):
            proxy.set_mode("flaky")
        w3.close()
        await proxy.stop()
        server.close()

    asyncio.run(main())
