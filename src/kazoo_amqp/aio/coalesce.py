"""One write per loop iteration: the write coalescer of every transport we own.

A protocol that produces many small frames (socket replies, AMQP publishes, worker deliveries)
pays one system call and one wake-up of the peer per ``transport.write``. :class:`WriteCoalescer`
gathers what is written during one loop iteration and hands it to the sink in one call.

Rules:

* ``write(data)`` queues ``data`` and schedules one flush at the end of the current iteration
  (``call_soon``), or after ``gather_s`` seconds when the caller says the connection is busy
  (many requests in flight: their replies pace the peer anyway, and one write per fraction of
  a millisecond saves a system call and a peer wake-up per frame).
* ``write_now(data)`` writes at once when nothing is queued and nothing holds the coalescer:
  the latency path for a lone request (no extra loop turn).
* ``hold()`` / ``release()`` bracket a burst produced synchronously (say, every reply produced
  while handling one read): nothing leaves until ``release``, which flushes once.
* Order is kept: bytes reach the sink in the order they were written.
* The sink is called with one ``bytes`` object; it decides what to do when its transport is
  gone (a closed transport drops, a worker pipe that is reconnecting drops too, since the
  pool re-sends its in-flight table).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["GATHER_S", "WriteCoalescer"]

#: Default delay of a gathered (busy) flush, in seconds.
GATHER_S = 0.0005


class WriteCoalescer:
    """Queue writes and hand them to ``sink`` in one call per loop iteration.

    >>> import asyncio
    >>> async def demo() -> list[bytes]:
    ...     got: list[bytes] = []
    ...     c = WriteCoalescer(asyncio.get_running_loop(), got.append)
    ...     c.write(b"a"); c.write(b"b")
    ...     await asyncio.sleep(0)
    ...     return got
    >>> asyncio.run(demo())
    [b'ab']
    """

    __slots__ = ("_gather_s", "_held", "_loop", "_out", "_scheduled", "_sink")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sink: Callable[[bytes], object],
        *,
        gather_s: float = GATHER_S,
    ) -> None:
        self._loop = loop
        self._sink = sink
        self._gather_s = gather_s
        self._out: list[bytes] = []
        self._scheduled = False
        self._held = 0

    @property
    def queued(self) -> int:
        """Frames waiting for the next flush."""
        return len(self._out)

    def write(self, data: bytes, *, busy: bool = False) -> None:
        """Queue ``data`` for the flush at the end of this iteration (``busy``: after
        ``gather_s``)."""
        self._out.append(data)
        if not self._scheduled and not self._held:
            self._scheduled = True
            if busy:
                self._loop.call_later(self._gather_s, self._scheduled_flush)
            else:
                self._loop.call_soon(self._scheduled_flush)

    def write_now(self, data: bytes) -> None:
        """Write ``data`` at once if nothing is queued or held; else queue it behind the rest."""
        if self._out or self._held:
            self.write(data)
        else:
            self._sink(data)

    def hold(self) -> None:
        """Keep everything written until the matching :meth:`release` (calls nest)."""
        self._held += 1

    def release(self) -> None:
        """End a :meth:`hold`; the outermost release flushes what was queued."""
        self._held -= 1
        if not self._held and self._out:
            self.flush()

    def flush(self) -> None:
        """Hand everything queued to the sink now, in one call."""
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self._sink(data)

    def clear(self) -> None:
        """Drop everything queued (the transport is gone)."""
        self._out.clear()

    def _scheduled_flush(self) -> None:
        self._scheduled = False
        if not self._held:
            self.flush()
