"""The audit sink over a real pipe: bounded, written from the loop, fails closed, loses nothing."""

from __future__ import annotations

import asyncio
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.observe.sink import CHUNK, FILE_CHUNK, AuditSink, AuditUnavailable


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


def _recording(writes: list[bytes]) -> Callable[[int, bytes], int]:
    """``os.write`` that also keeps what each call wrote in ``writes``."""

    def write(fd: int, data: bytes) -> int:
        writes.append(data)
        return os.write(fd, data)

    return write


async def test_lines_are_written_by_the_loop_in_order(pipe: tuple[int, int]) -> None:
    """Without a linger, lines offered in one loop iteration are written on the next one,
    whole and in order."""
    read, write = pipe
    sink = AuditSink(write, linger_seconds=0)
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
    sink = AuditSink(write, max_bytes=8 * 1024, wait_seconds=0.05, linger_seconds=0)
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
    recording = _recording(writes)
    sink = AuditSink(write, write=recording, linger_seconds=0)
    for i in range(300):
        await sink.emit(f"line {i:04d} {'y' * 40}\n".encode())
    await asyncio.sleep(0)
    assert all(len(w) <= CHUNK and w.endswith(b"\n") for w in writes)
    assert len(_read_all(read).splitlines()) == 300


async def test_a_busy_loop_lines_share_one_write_after_the_linger(
    pipe: tuple[int, int],
) -> None:
    """Lines queued within the linger go out together once it has passed, not one write each."""
    read, write = pipe
    writes: list[bytes] = []
    recording = _recording(writes)
    sink = AuditSink(write, write=recording, linger_seconds=0.05)
    lines = [f"line {i:02d}\n".encode() for i in range(40)]
    for line in lines:
        await sink.emit(line)
        await asyncio.sleep(0)  # other requests' turns on the loop
    assert writes == []
    for _ in range(200):
        if sink.pending == 0:
            break
        await asyncio.sleep(0.01)
    assert writes == [b"".join(lines)]
    assert _read_all(read) == b"".join(lines)


async def test_a_regular_file_gets_larger_line_aligned_writes(tmp_path: Path) -> None:
    """A log file needs no PIPE_BUF bound: 64 KiB writes, still whole lines, none lost."""
    writes: list[bytes] = []
    recording = _recording(writes)
    path = tmp_path / "audit.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        sink = AuditSink(fd, write=recording, linger_seconds=0)
        lines = [f"line {i:04d} {'z' * 90}\n".encode() for i in range(2000)]
        for line in lines:
            sink.offer(line)
        await asyncio.sleep(0)
    finally:
        os.close(fd)
    assert all(len(w) <= FILE_CHUNK and w.endswith(b"\n") for w in writes)
    assert max(map(len, writes)) > CHUNK
    assert path.read_bytes() == b"".join(lines)
