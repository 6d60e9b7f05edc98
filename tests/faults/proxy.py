"""FaultProxy: a loopback TCP proxy to a PostgreSQL unix socket, with network faults.

Runs an asyncio server on ``127.0.0.1:0`` in its own thread and event loop. Each
accepted connection is piped to the server's unix socket. The fault in force can be
switched at run time, and applies to new and established connections alike:

- `passthrough`: forward everything (the initial mode);
- `refuse`: close each new connection on accept;
- `blackhole`: accept, and forward nothing in either direction; data read meanwhile is
  held (not dropped), so a connection that outlives the fault carries on intact, as
  after a healed network partition;
- `reset_after`: let each client send *n_bytes* more; the send that would go past that
  is forwarded up to the limit and the connection cut with a TCP RST (SO_LINGER 0): a
  cut in mid-transaction, inside or between the client's messages, never after a
  message whose answer is on its way;
- `reset_after_sending`: forward the client's chunk holding *marker*, then cut at once,
  before the answer can come back (``b"COMMIT"``: the commit happens, its ack is lost);
- `latency`: delay every chunk, in either direction, by *ms* milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 65536
_MAX_CONNECTIONS = 64
_TIMEOUT = 5.0


@dataclass(eq=False)  # one per connection, kept in a set by identity
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    budget: int | None = None  # bytes the client may still send, under reset_after
    marker: bytes = b""  # under reset_after_sending: cut after the chunk holding this

    def cut(self) -> None:
        if not self.client.transport.is_closing():
            # Linger on, for zero seconds: close() then sends RST instead of FIN.
            sock = self.client.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.client.transport.abort()
        self.server.close()  # after what was forwarded: the server sees it, then EOF


class FaultProxy:
    """Forward 127.0.0.1:`port` to the unix socket *target*; inject faults on demand."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.port = 0
        self._mode = "pass"
        self._delay = 0.0
        self._reset_bytes = 0
        self._reset_marker = b""
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._flowing = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy")

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_TIMEOUT)
        self._loop.close()

    def passthrough(self) -> None:
        self._call(self._switch("pass"))

    def refuse(self) -> None:
        self._call(self._switch("refuse"))

    def blackhole(self) -> None:
        self._call(self._switch("blackhole"))

    def reset_after(self, n_bytes: int) -> None:
        self._reset_bytes = n_bytes
        self._call(self._switch("reset"))

    def reset_after_sending(self, marker: bytes) -> None:
        self._reset_marker = marker
        self._call(self._switch("reset_on"))

    def latency(self, ms: float) -> None:
        self._delay = ms / 1000
        self._call(self._switch("latency"))

    def _call(self, coroutine: Coroutine[object, object, None]) -> None:
        """Run *coroutine* on the proxy's loop and wait for it: the mode is then in force."""
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(_TIMEOUT)

    async def _listen(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.cut()
        handlers = asyncio.gather(*self._handlers, return_exceptions=True)
        await asyncio.wait_for(handlers, _TIMEOUT)

    async def _switch(self, mode: str) -> None:
        self._mode = mode
        for link in self._links:
            self._arm(link)
        if mode == "blackhole":
            self._flowing.clear()
        else:
            self._flowing.set()

    def _arm(self, link: _Link) -> None:
        link.budget = self._reset_bytes if self._mode == "reset" else None
        link.marker = self._reset_marker if self._mode == "reset_on" else b""

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            if self._mode == "refuse" or len(self._links) >= _MAX_CONNECTIONS:
                return
            try:
                up_reader, up_writer = await asyncio.open_unix_connection(str(self.target))
            except OSError:
                return  # the server is down: the client sees its connection closed
            link = _Link(writer, up_writer)
            self._arm(link)
            self._links.add(link)
            await asyncio.gather(
                self._pump(link, reader, up_writer, from_client=True),
                self._pump(link, up_reader, writer, from_client=False),
            )
            self._links.discard(link)
            up_writer.close()
        finally:
            writer.close()
            self._handlers.discard(handler)

    async def _pump(
        self,
        link: _Link,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        *,
        from_client: bool,
    ) -> None:
        try:
            while data := await source.read(_CHUNK):
                await self._flowing.wait()  # blackhole: hold the data, read nothing more
                if self._mode == "latency":
                    await asyncio.sleep(self._delay)
                allowed = _allowance(link, data) if from_client else None
                if allowed is not None:
                    sink.write(data[:allowed])
                    await sink.drain()
                    link.cut()
                    return
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            link.cut()  # one side went away mid-write: take the other down too
            return
        with contextlib.suppress(OSError):
            sink.write_eof()


def _allowance(link: _Link, data: bytes) -> int | None:
    """How many bytes of *data* to forward before cutting *link*; ``None``: all, no cut."""
    if link.marker:
        return len(data) if link.marker in data else None
    if link.budget is None or len(data) <= link.budget:
        if link.budget is not None:
            link.budget -= len(data)
        return None
    return link.budget
