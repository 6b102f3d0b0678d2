"""The audit sink: lines serialised once, written from the event loop, never dropped.

An identity service must not hand out a token it could not audit (Vault blocks requests when
no audit device can write). Lines go to a bounded buffer and are written by the event loop
itself, a few milliseconds after the first line of a batch (one ``write`` for many lines: a
write per hand-out cost more CPU than building the line), in line-aligned chunks of at most
``PIPE_BUF`` bytes to a pipe (so it never interleaves them with other writers' lines) or
64 KiB to a regular file, through a descriptor of its own in non-blocking mode. When the
reader of that descriptor cannot keep up and the buffer is full, ``emit`` waits for room up
to a short bound and then refuses with ``AuditUnavailable`` (503 + ``Retry-After``): a
hand-out fails closed, a line is never silently dropped. ``drain`` writes out everything,
blocking, at shutdown.

No thread, no ``logging`` machinery on the request path.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import stat
from collections import deque
from collections.abc import Callable

from service.errors import AuditUnavailable

__all__ = ["AuditSink", "AuditUnavailable", "open_stderr"]

CHUNK = select.PIPE_BUF
FILE_CHUNK = 1 << 16
# Long enough to batch a busy loop's lines into one write, short enough that a line reaches
# the log before anyone could look for it.
LINGER_SECONDS = 0.005
_RETRY = (errno.EAGAIN, errno.EWOULDBLOCK)


def open_stderr() -> int:
    """A non-blocking descriptor of this process's stderr that leaves fd 2 itself blocking.

    Opening ``/proc/self/fd/2`` creates a new open file description (``O_NONBLOCK`` lives
    there), so the logging thread's blocking writes to fd 2 are not affected. A regular file
    gets a duplicate instead: sharing fd 2's offset is what keeps the two writers from
    overwriting each other's lines when the file was not opened for appending (and regular
    files never block anyway). Falls back to a duplicate elsewhere.
    """
    if stat.S_ISREG(os.fstat(2).st_mode):
        return os.dup(2)
    flags = os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        return os.open("/proc/self/fd/2", flags)
    except OSError:
        return os.dup(2)


class AuditSink:
    """A bounded, loop-driven writer of complete lines to one file descriptor."""

    def __init__(
        self,
        fd: int,
        *,
        max_bytes: int = 1 << 20,
        wait_seconds: float = 0.5,
        linger_seconds: float = LINGER_SECONDS,
        write: Callable[[int, bytes], int] = os.write,
    ) -> None:
        """``linger_seconds``: how long a first line waits for others to share its write."""
        self._fd = fd
        self._max_bytes = max_bytes
        self._wait = wait_seconds
        self._linger = linger_seconds
        self._write = write
        # Only pipes (and sockets) need PIPE_BUF-sized writes to keep lines whole.
        self._chunk = FILE_CHUNK if stat.S_ISREG(os.fstat(fd).st_mode) else CHUNK
        self._lines: deque[bytes] = deque()
        self._size = 0
        self._scheduled = False
        self._watching = False
        self._room = asyncio.Event()
        self.refused = 0  # hand-outs refused because the sink was full

    @property
    def pending(self) -> int:
        """Bytes waiting to be written."""
        return self._size

    def offer(self, line: bytes) -> bool:
        """Queue ``line`` (ending in a newline) when there is room; never blocks."""
        if self._size + len(line) > self._max_bytes and self._lines:
            return False
        self._lines.append(line)
        self._size += len(line)
        self._schedule()
        return True

    async def emit(self, line: bytes) -> None:
        """Queue ``line``, waiting up to the bound for room; ``AuditUnavailable`` after it."""
        if self.offer(line):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait
        while not self.offer(line):
            left = deadline - loop.time()
            if left <= 0:
                self.refused += 1
                raise AuditUnavailable
            self._room.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._room.wait(), left)

    def drain(self) -> None:
        """Write out everything now, blocking as long as it takes (shutdown only)."""
        while self._lines:
            try:
                self._write_some()
            except BlockingIOError:
                select.select([], [self._fd], [], 1.0)

    def _schedule(self) -> None:
        if self._scheduled or self._watching:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.drain()  # no loop (start-up, CLI): write at once
            return
        self._scheduled = True
        if self._linger > 0:
            loop.call_later(self._linger, self._flush)
        else:
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        try:
            self._write_some()
        except BlockingIOError:
            self._watch()

    def _watch(self) -> None:
        # The reader is behind: wake when the descriptor is writable again.
        loop = asyncio.get_running_loop()
        if not self._watching:
            self._watching = True
            loop.add_writer(self._fd, self._writable)

    def _writable(self) -> None:
        try:
            self._write_some()
        except BlockingIOError:
            return
        asyncio.get_running_loop().remove_writer(self._fd)
        self._watching = False

    def _write_some(self) -> None:
        """Write whole lines in line-aligned chunks until done or blocked."""
        while self._lines:
            chunk, count = self._next_chunk()
            try:
                written = self._write(self._fd, chunk)
            except OSError as exc:
                if exc.errno in _RETRY:
                    raise BlockingIOError from None
                raise
            self._consume(count, written, chunk)
            self._room.set()

    def _next_chunk(self) -> tuple[bytes, int]:
        parts: list[bytes] = []
        size = 0
        for line in self._lines:
            if parts and size + len(line) > self._chunk:
                break
            parts.append(line)
            size += len(line)
        return b"".join(parts), len(parts)

    def _consume(self, count: int, written: int, chunk: bytes) -> None:
        if written >= len(chunk):
            for _ in range(count):
                self._size -= len(self._lines.popleft())
            return
        # A partial write (only for chunks over PIPE_BUF, or a full disk): keep the rest.
        done = 0
        while self._lines and done + len(self._lines[0]) <= written:
            done += len(self._lines[0])
            self._size -= len(self._lines.popleft())
        if written > done:
            head = self._lines.popleft()
            self._lines.appendleft(head[written - done :])
            self._size -= written - done
