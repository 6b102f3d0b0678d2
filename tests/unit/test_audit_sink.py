"""The audit sink over a real pipe: bounded, written from the loop, fails closed, loses nothing."""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Iterator

import pytest

from service.observe.sink import CHUNK, AuditSink, AuditUnavailable


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    """A pipe whose write end is non-blocking, as the sink's own stderr descriptor is."""
    read, write = os.pipe()
    fcntl.fcntl(write, fcntl.F_SETFL, fcntl.fcntl(write, fcntl.F_GETFL) | os.O_NONBLOCK)
    try:
        yield read, write
    finally:
        os.close(read)
        os.close(write)


def _read_all(fd: int) -> bytes:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


async def test_lines_are_written_by_the_loop_in_order(pipe: tuple[int, int]) -> None:
    """Lines offered in one loop iteration are written on the next one, whole and in order."""
    read, write = pipe
    sink = AuditSink(write)
    lines = [f'{{"n": {i}}}\n'.encode() for i in range(500)]
    for line in lines:
        await sink.emit(line)
    assert sink.pending > 0  # nothing written on the request path
    await asyncio.sleep(0)
    assert sink.pending == 0
    assert _read_all(read) == b"".join(lines)


async def test_a_stuck_reader_makes_handouts_fail_closed_and_loses_no_line(
    pipe: tuple[int, int],
) -> None:
    """Reader stuck: the buffer fills, emit refuses with 503 after its bound; every queued
    line still arrives once the reader catches up, and refused lines were never queued."""
    read, write = pipe
    sink = AuditSink(write, max_bytes=8 * 1024, wait_seconds=0.05)
    accepted: list[bytes] = []
    refused = 0
    for i in range(20_000):  # far more than a 64 KiB pipe plus an 8 KiB buffer hold
        line = f'{{"n": {i}, "pad": "{"x" * 100}"}}\n'.encode()
        try:
            await sink.emit(line)
        except AuditUnavailable as exc:
            refused += 1
            status, retry = exc.status, exc.headers()["Retry-After"]
            if refused == 3:
                break
        else:
            accepted.append(line)
        await asyncio.sleep(0)
    assert refused == 3
    assert sink.refused == 3
    assert (status, retry) == (503, "1")
    received = b""
    for _ in range(1000):
        received += _read_all(read)
        if len(received) == sum(map(len, accepted)):
            break
        await asyncio.sleep(0.001)
    assert received == b"".join(accepted)


def test_drain_writes_everything_without_a_loop(pipe: tuple[int, int]) -> None:
    """Outside a loop (start-up, shutdown) lines are written at once."""
    read, write = pipe
    sink = AuditSink(write)
    assert sink.offer(b"one\n")
    assert sink.offer(b"two\n")
    sink.drain()
    assert _read_all(read) == b"one\ntwo\n"


async def test_chunks_never_split_a_line_across_writes(pipe: tuple[int, int]) -> None:
    """Each write holds whole lines and at most PIPE_BUF bytes, so pipes never interleave."""
    read, write = pipe
    writes: list[bytes] = []

    def recording(fd: int, data: bytes) -> int:
        writes.append(data)
        return os.write(fd, data)

    sink = AuditSink(write, write=recording)
    for i in range(300):
        await sink.emit(f"line {i:04d} {'y' * 40}\n".encode())
    await asyncio.sleep(0)
    assert all(len(w) <= CHUNK and w.endswith(b"\n") for w in writes)
    assert len(_read_all(read).splitlines()) == 300
