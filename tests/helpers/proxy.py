"""A TCP proxy that breaks links on demand, for fault tests (one proxy per edge: edge -> proxy -> broker).

`cut()` aborts every connection (RST) and refuses new ones; `blackhole()` keeps the sockets open but
stops forwarding (a silent dead link, noticed only by keepalive); `restore()` undoes both.
`arm(after_bytes, action)` trips `cut` or `blackhole` by itself once that many more bytes went from the
client towards the broker, so a test can break a link in the middle of an upload without racing it.
The proxy runs its own asyncio loop on a daemon thread; every control call is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import Literal

_CALL_TIMEOUT = 5.0


class FlakyProxy:
    """127.0.0.1:`port` -> `host`:`upstream_port`, with cut/blackhole/restore."""

    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.upstream_port = upstream_port
        self.port = 0
        self._down = False
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter, frozenset[asyncio.Task[None]]]] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._flow: asyncio.Event | None = None
        self._server: asyncio.base_events.Server | None = None
        # (bytes left before tripping, action, tripped event); only touched on the loop thread.
        self._armed: tuple[int, str, threading.Event] | None = None
        self.upstream_bytes = 0  # bytes forwarded client -> broker so far
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name=f"flaky-proxy-{upstream_port}", daemon=True
        )
        self._thread.start()
        if not ready.wait(_CALL_TIMEOUT):
            raise TimeoutError("proxy did not start")

    # -- control (any thread) --------------------------------------------------------------------

    def cut(self) -> None:
        """Abort every connection (both sides see a reset) and refuse new ones until `restore()`."""
        self._call(self._cut_now)

    async def _cut_now(self) -> None:
        self._down = True
        for client_w, upstream_w, tasks in list(self._conns):
            for task in tasks:
                task.cancel()
            client_w.transport.abort()
            upstream_w.transport.abort()
        self._conns.clear()

    def arm(self, after_bytes: int, action: Literal["cut", "blackhole"] = "cut") -> threading.Event:
        """Forward `after_bytes` more bytes towards the broker, then `cut` or `blackhole` the link.

        Returns an event that is set when the link broke. The packet that crosses the limit is split:
        its head is forwarded, its tail is lost (cut) or held (blackhole), as on a real link.
        """
        if after_bytes < 1:
            raise ValueError("after_bytes must be >= 1")
        tripped = threading.Event()

        async def arm() -> None:
            self._armed = (after_bytes, action, tripped)

        self._call(arm)
        return tripped

    def disarm(self) -> None:
        async def disarm() -> None:
            self._armed = None

        self._call(disarm)

    def blackhole(self) -> None:
        """Stop forwarding in both directions; sockets stay open (a silent dead link)."""

        async def blackhole() -> None:
            if self._flow is not None:
                self._flow.clear()

        self._call(blackhole)

    def restore(self) -> None:
        """Accept and forward again."""

        async def restore() -> None:
            self._down = False
            if self._flow is not None:
                self._flow.set()

        self._call(restore)

    @property
    def connections(self) -> int:
        """Connections currently proxied."""
        return len(self._conns)

    def close(self) -> None:
        """Cut everything, stop the server and the loop thread."""
        if not self._thread.is_alive():
            return
        self.cut()

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
            for task in list(self._handlers):
                task.cancel()
            await asyncio.gather(*self._handlers, return_exceptions=True)

        self._call(shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(_CALL_TIMEOUT)
        self._loop.close()

    def __enter__(self) -> FlakyProxy:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- the loop thread ---------------------------------------------------------------------------

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        self._flow = asyncio.Event()
        self._flow.set()
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, self.host, 0))
        self.port = self._server.sockets[0].getsockname()[1]
        ready.set()
        self._loop.run_forever()

    def _call(self, fn: Callable[[], Awaitable[None]]) -> None:
        async def wrapped() -> None:
            await fn()

        asyncio.run_coroutine_threadsafe(wrapped(), self._loop).result(_CALL_TIMEOUT)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool = False) -> None:
        try:
            while data := await reader.read(65536):
                if upstream and self._armed is not None:
                    data = await self._trip(data, writer)
                if self._flow is not None:
                    await self._flow.wait()
                if not data:
                    continue
                if upstream:
                    self.upstream_bytes += len(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _trip(self, data: bytes, writer: asyncio.StreamWriter) -> bytes:
        """Count `data` against the armed limit; at the limit forward the head, break the link, return the rest."""
        assert self._armed is not None
        left, action, tripped = self._armed
        if len(data) < left:
            self._armed = (left - len(data), action, tripped)
            return data
        head, rest = data[:left], data[left:]
        self._armed = None
        self.upstream_bytes += len(head)
        writer.write(head)
        await writer.drain()
        if action == "cut":
            await self._cut_now()  # cancels this pipe too: the rest is lost
            rest = b""
        elif self._flow is not None:
            self._flow.clear()  # the rest waits for restore()
        tripped.set()
        return rest

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        current = asyncio.current_task()
        if current is not None:
            self._handlers.add(current)
        try:
            if self._down:
                client_w.transport.abort()
                return
            try:
                upstream_r, upstream_w = await asyncio.open_connection(self.host, self.upstream_port)
            except OSError:
                client_w.transport.abort()
                return
            tasks = frozenset(
                {
                    asyncio.ensure_future(self._pipe(client_r, upstream_w, upstream=True)),
                    asyncio.ensure_future(self._pipe(upstream_r, client_w)),
                }
            )
            conn = (client_w, upstream_w, tasks)
            self._conns.add(conn)
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self._conns.discard(conn)
                upstream_w.transport.abort()
                client_w.transport.abort()
        finally:
            if current is not None:
                self._handlers.discard(current)
            with contextlib.suppress(Exception):
                client_w.close()
