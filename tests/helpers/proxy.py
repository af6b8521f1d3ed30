"""A TCP proxy that breaks links on demand, for fault tests (one proxy per edge: edge -> proxy -> broker).

`cut()` aborts every connection (RST) and refuses new ones; `blackhole()` keeps the sockets open but
stops forwarding (a silent dead link, noticed only by keepalive); `restore()` undoes both. The proxy
runs its own asyncio loop on a daemon thread; every control call is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable

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

        async def cut() -> None:
            self._down = True
            for client_w, upstream_w, tasks in list(self._conns):
                for task in tasks:
                    task.cancel()
                client_w.transport.abort()
                upstream_w.transport.abort()
            self._conns.clear()

        self._call(cut)

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

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self._flow is not None:
                    await self._flow.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

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
                    asyncio.ensure_future(self._pipe(client_r, upstream_w)),
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
