"""Length-prefixed frames: the byte layer of the local socket and of the worker pipes.

A frame is a 4-byte big-endian unsigned length followed by that many payload bytes.
Nothing else is on the wire: no magic, no version, no checksum.

Rules of this file:

* No I/O. The caller reads bytes from wherever it likes and hands them to
  :meth:`FrameDecoder.feed`, which returns every frame completed by them; it writes the
  result of :func:`encode_frame` itself.
* A length over the decoder's limit is a protocol error from which there is no recovery
  (the stream has lost its frame boundaries): :meth:`FrameDecoder.feed` raises
  :class:`~kazoo_amqp.errors.ProtocolError` and the decoder stays :attr:`~FrameDecoder.broken`.
* Speed matters: the manager pushes every delivery to the workers through this code, and
  a 64 KiB read often holds hundreds of small frames. ``feed`` therefore walks the input with
  an offset (no re-slicing of the buffer per frame) and compacts its buffer at most once per
  call.
"""

from __future__ import annotations

import struct

from kazoo_amqp.errors import ProtocolError

__all__ = ["DEFAULT_MAX_FRAME", "HEADER_SIZE", "MAX_FRAME_LIMIT", "FrameDecoder", "encode_frame"]

_HEADER = struct.Struct(">I")
_pack = _HEADER.pack
_unpack_from = _HEADER.unpack_from

#: Bytes taken by the length prefix.
HEADER_SIZE = 4
#: The largest length a 4-byte prefix can express.
MAX_FRAME_LIMIT = 0xFFFFFFFF
#: The decoder's default limit on one frame's payload (64 MiB).
DEFAULT_MAX_FRAME = 64 * 1024 * 1024


def encode_frame(payload: bytes) -> bytes:
    """Return ``payload`` with its 4-byte big-endian length in front.

    Raises:
        ProtocolError: the payload is longer than a 4-byte length can say (4 GiB - 1).
    """
    size = len(payload)
    if size > MAX_FRAME_LIMIT:
        raise ProtocolError(
            f"frame of {size} bytes cannot be sent: the length prefix holds at most "
            f"{MAX_FRAME_LIMIT} bytes"
        )
    return _pack(size) + payload


def _too_big(length: int, limit: int) -> ProtocolError:
    return ProtocolError(
        f"frame of {length} bytes exceeds the limit of {limit} bytes; "
        "is the peer speaking the kazoo-amqp socket protocol?"
    )


class _Broken(Exception):
    """Internal: the stream broke after ``frames`` were completed."""

    def __init__(self, frames: list[bytes], error: ProtocolError) -> None:
        super().__init__(str(error))
        self.frames = frames
        self.error = error


class FrameDecoder:
    """Turn a byte stream into frames; keeps a partial frame until the rest arrives.

    >>> d = FrameDecoder()
    >>> d.feed(encode_frame(b"ab") + encode_frame(b"c")[:2])
    [b'ab']
    >>> d.feed(encode_frame(b"c")[2:])
    [b'c']
    """

    __slots__ = ("_broken", "_buf", "_max")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if not 0 <= max_frame <= MAX_FRAME_LIMIT:
            raise ValueError(f"max_frame must be between 0 and {MAX_FRAME_LIMIT}, not {max_frame}")
        self._max = max_frame
        self._buf = bytearray()
        self._broken = False

    @property
    def max_frame(self) -> int:
        """The largest payload accepted, in bytes."""
        return self._max

    @property
    def broken(self) -> bool:
        """True once a frame over the limit was seen; every later :meth:`feed` raises."""
        return self._broken

    @property
    def buffered(self) -> int:
        """Bytes held back as the start of an incomplete frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Add ``data`` to the stream and return every frame it completes, oldest first.

        ``feed(b"")`` is allowed and returns ``[]``. Any split of the stream into ``feed`` calls
        yields the same frames.

        Raises:
            ProtocolError: a length prefix is over ``max_frame`` (then, and on every later call,
                the decoder is :attr:`broken`). Frames completed earlier in the same call are
                lost with it; use :meth:`feed_some` to keep them.
        """
        frames, error = self.feed_some(data)
        if error is not None:
            raise error
        return frames

    def feed_some(
        self, data: bytes | bytearray | memoryview
    ) -> tuple[list[bytes], ProtocolError | None]:
        """As :meth:`feed`, but a length over the limit is returned with the frames completed
        before it, not raised: a server can still answer those before it gives up the stream.
        """
        try:
            return self._feed(data, []), None
        except _Broken as broken:
            return broken.frames, broken.error

    def _feed(self, data: bytes | bytearray | memoryview, frames: list[bytes]) -> list[bytes]:
        if self._broken:
            raise _Broken(
                frames,
                ProtocolError(
                    "the frame decoder is unusable after an earlier protocol error on this stream"
                ),
            )
        buf = self._buf
        limit = self._max
        unpack = _unpack_from
        if type(data) is not bytes:
            data = bytes(data)
        end_of_data = len(data)
        pos = 0

        if buf:
            # Finish the frame held back from an earlier call, taking only the bytes it needs.
            held = len(buf)
            if held < 4:
                pos = min(4 - held, end_of_data)
                buf += data[:pos]
                held += pos
                if held < 4:
                    return frames
            (length,) = unpack(buf, 0)
            if length > limit:
                self._broken = True
                buf.clear()
                raise _Broken(frames, _too_big(length, limit))
            missing = 4 + length - held
            if end_of_data - pos < missing:
                buf += data[pos:] if pos else data
                return frames
            buf += data[pos : pos + missing]
            pos += missing
            with memoryview(buf) as view:
                frames.append(view[4:].tobytes())
            buf.clear()  # the one compaction of this call

        # Walk the caller's bytes with an offset; each frame is one slice (one copy) and
        # only the incomplete tail, if any, is kept.
        while end_of_data - pos >= 4:
            (length,) = unpack(data, pos)
            if length > limit:
                self._broken = True
                raise _Broken(frames, _too_big(length, limit))
            end = pos + 4 + length
            if end > end_of_data:
                break
            frames.append(data[pos + 4 : end])
            pos = end
        if pos < end_of_data:
            buf += data[pos:] if pos else data
        return frames
