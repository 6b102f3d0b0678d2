"""Logging set-up: JSON or readable lines, written off the event loop, scrubbed of secrets.

Handlers run in a ``QueueListener`` thread so a slow stderr never stalls a request. A
filter masks anything shaped like an API key, a JWT or a bearer credential, as a last line
of defence: the code never logs those on purpose.
"""

from __future__ import annotations

import atexit
import contextvars
import functools
import logging
import logging.handlers
import queue
import re
import sys
import threading
import time
from typing import Any

import orjson

_SECRET_SHAPES = re.compile(
    r"tbk_[A-Za-z0-9]+_[A-Za-z0-9_-]+"  # broker API keys
    r"|eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"  # JWTs
    r"|(?i:bearer|basic)\s+[A-Za-z0-9._~+/=-]+"  # credentials in headers
)
# uvicorn adds color_message, a duplicate of the message with terminal escapes.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


# The id of the request being served, set by the HTTP layer; every record logged while it is
# being served carries it, so one request's lines can be picked out of many replicas' logs.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to records logged while a request is being served."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Tag ``record``; never drops it."""
        rid = REQUEST_ID.get()
        if rid is not None and not hasattr(record, "request_id"):
            record.request_id = rid
        return True


def scrub(text: str) -> str:
    """``text`` with every secret-shaped substring replaced by ``[redacted]``."""
    # Every shape starts with one of these; most lines hold none, and three substring
    # searches cost a fraction of the regex (which was half of formatting an audit line).
    if "tbk_" not in text and "eyJ" not in text:
        lowered = text.lower()
        if "bearer" not in lowered and "basic" not in lowered:
            return text
    return _SECRET_SHAPES.sub("[redacted]", text)


def scrub_bytes(data: bytes) -> bytes:
    """:func:`scrub` for a UTF-8 line; decoded only when it may hold a secret."""
    if b"tbk_" not in data and b"eyJ" not in data:
        lowered = data.lower()
        if b"bearer" not in lowered and b"basic" not in lowered:
            return data
    # The text pattern decides: its \s also matches the Unicode spaces bytes would miss.
    return scrub(data.decode()).encode()


def iso_time(seconds: float) -> str:
    """``seconds`` since the epoch as the UTC timestamp every JSON line carries."""
    return f"{_second(int(seconds))}.{int(seconds * 1000) % 1000:03d}Z"


@functools.lru_cache(maxsize=4)
def _second(whole: int) -> str:
    # Formatting the date part was most of an audit line's timestamp; it changes once a second.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's extras."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as JSON."""
        line: dict[str, Any] = {
            "time": iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info and record.exc_info[0] is not None:
            line["exception"] = record.exc_info[0].__name__
        return scrub(orjson.dumps(line, default=str).decode())


class TextFormatter(logging.Formatter):
    """Readable lines for a terminal: ``time level logger message key=value...``."""

    def format(self, record: logging.LogRecord) -> str:
        """Render ``record`` as text."""
        extras = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        return scrub(f"{stamp} {record.levelname:<7} {record.name}: {record.getMessage()} {extras}")


class _InProcessQueueHandler(logging.handlers.QueueHandler):
    """A QueueHandler for a queue inside this process: the record goes as it is.

    The standard ``prepare`` formats the message and copies the record so it can be pickled
    for another process; here the listener thread formats it anyway, and that copy was a
    large share of the audit line's cost on the event loop.
    """

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """``record`` unchanged."""
        return record


class _BatchWriter:
    """The logging thread: takes records off the queue in batches, one ``write`` per batch.

    Waking for every record (the standard ``QueueListener``) hands the GIL back and forth
    with the event loop thousands of times a second under load; lingering a few
    milliseconds lets a burst collect, so one wake-up formats and writes many lines.
    """

    def __init__(
        self,
        records: queue.SimpleQueue[logging.LogRecord | None],
        handler: logging.StreamHandler[Any],
        *,
        linger: float = 0.01,
        max_batch: int = 1024,
    ) -> None:
        self._records = records
        self._handler = handler
        self._linger = linger
        self._max_batch = max_batch
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self) -> None:
        """Write out everything queued so far, then end the thread."""
        self._records.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            first = self._records.get()
            batch = [first]
            if first is not None:
                time.sleep(self._linger)
                while len(batch) < self._max_batch and batch[-1] is not None:
                    try:
                        batch.append(self._records.get_nowait())
                    except queue.Empty:
                        break
            self._write([r for r in batch if r is not None])
            if batch[-1] is None:
                return

    def _write(self, records: list[logging.LogRecord]) -> None:
        handler = self._handler
        lines = []
        for record in records:
            if record.levelno < handler.level or not handler.filter(record):
                continue
            try:
                lines.append(handler.format(record) + "\n")
            except Exception:  # noqa: BLE001 - one bad record must not stop the logging thread
                handler.handleError(record)
        if lines:
            try:
                handler.stream.write("".join(lines))
                handler.flush()
            except Exception:  # noqa: BLE001 - e.g. a closed stderr at exit
                handler.handleError(records[-1])


_listener: _BatchWriter | None = None
_direct: logging.Handler | None = None


def configure_logging(level: str = "INFO", *, json: bool | None = None) -> bool:
    """Route all logging through a queue to stderr; JSON unless stderr is a terminal.

    Returns whether the lines are JSON.
    """
    global _listener, _direct
    drain()
    # Our lines show none of these, and collecting them is most of a record's cost on the
    # event loop: the caller's file and line (a stack walk), thread and process names. The
    # logging HOWTO's "Optimization" section documents these switches.
    logging._srcfile = None  # noqa: SLF001
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    use_json = (not sys.stderr.isatty()) if json is None else json
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    log_queue: queue.SimpleQueue[logging.LogRecord | None] = queue.SimpleQueue()
    listener = _BatchWriter(log_queue, handler)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    queue_handler = _InProcessQueueHandler(log_queue)
    # Runs in the logging thread of the request, where the context variable is set.
    queue_handler.addFilter(RequestIdFilter())
    root.addHandler(queue_handler)
    root.setLevel(level.upper())
    listener.start()
    if _listener is None and _direct is None:
        atexit.register(drain)
    _listener, _direct = listener, handler
    return use_json


def drain() -> None:
    """Write out every queued record and log synchronously from now on.

    Called at shutdown: uvicorn ends a worker by re-raising SIGTERM, so records still in
    the queue would otherwise be lost with the process.
    """
    global _listener  # noqa: PLW0603
    if _listener is None:
        return
    _listener.stop()
    _listener = None
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, logging.handlers.QueueHandler):
            root.removeHandler(old)
    if _direct is not None:
        root.addHandler(_direct)
