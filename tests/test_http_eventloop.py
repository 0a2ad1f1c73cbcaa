"""Sluice's event loop: uvloop, with its connecting coroutines started in tasks of their own.

proxy/http/eventloop.py says why: on Python 3.11 a uvloop coroutine that starts
while an exception is being handled can crash the process when it finishes.
tests/test_failover.py meets the crash itself, with the compiled modules.
"""

import asyncio
import sys
from collections.abc import Callable

import uvloop

from proxy.http.eventloop import Loop, in_own_task, new_event_loop


def _handled_while_connecting(loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> object:
    """What ``sys.exc_info()`` shows inside create_connection, called from an ``except`` block."""
    seen: list[object] = []

    async def main() -> None:
        server = await asyncio.start_server(lambda reader, writer: writer.close(), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def protocol() -> asyncio.Protocol:
            seen.append(sys.exc_info()[1])  # called inside uvloop's coroutine
            return asyncio.Protocol()

        try:
            raise LookupError("being handled")
        except LookupError:
            transport, _ = await asyncio.get_running_loop().create_connection(protocol, "127.0.0.1", port)
        transport.close()
        server.close()
        await server.wait_closed()

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    return seen[0]


def test_uvloop_itself_starts_a_connection_with_the_handled_exception_saved() -> None:
    # The hazard the loop exists for: without it, the exception is the coroutine's.
    assert isinstance(_handled_while_connecting(uvloop.new_event_loop), LookupError)


def test_sluice_loop_starts_a_connection_with_no_exception_being_handled() -> None:
    assert _handled_while_connecting(new_event_loop) is None


def test_sluice_loop_is_uvloop() -> None:
    loop = new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop) and isinstance(loop, Loop)
    finally:
        loop.close()


class _Transport:
    closed = False

    def close(self) -> None:
        self.closed = True


async def _connected(loop: asyncio.AbstractEventLoop, transport: _Transport) -> tuple[_Transport, None]:
    return transport, None


def test_a_connection_made_as_its_caller_is_cancelled_is_closed_not_leaked() -> None:
    transport = _Transport()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        caller = asyncio.ensure_future(in_own_task(_connected)(loop, transport))
        await asyncio.sleep(0)  # the caller starts the connecting task and waits on it
        await asyncio.sleep(0)  # the connecting task finishes; the caller is not yet back
        caller.cancel()
        try:
            await caller
        except asyncio.CancelledError:
            pass
        else:
            raise AssertionError("the caller was not cancelled")

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main())
    assert transport.closed


def test_a_connection_made_normally_is_returned_open() -> None:
    transport = _Transport()

    async def main() -> tuple[_Transport, None]:
        result: tuple[_Transport, None] = await in_own_task(_connected)(asyncio.get_running_loop(), transport)
        return result

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        assert runner.run(main()) == (transport, None)
    assert not transport.closed
