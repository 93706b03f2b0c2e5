"""Log output: readable text (the default) or one JSON object per line (``log_format``).

A JSON line has ``time`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``, ``message``, and
whichever identity fields are known (``core.logctx.FIELDS``: exchange, routing_key, msg_id,
call_id, route, worker): from ``extra=`` of the logging call, else from the message being
handled (``core.logctx``). ``process`` and, for the daemon's workers, ``worker`` say which
process wrote it; ``exc`` holds a traceback. Nothing is parsed out of message text.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

from kazoo_amqp.core import logctx

__all__ = ["JsonFormatter", "setup_logging"]

TEXT_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; see the module docstring."""

    def __init__(self, *, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        doc: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        if self.worker is not None:
            doc["worker"] = self.worker
        known = logctx.current()
        for name in logctx.FIELDS:
            value = getattr(record, name, None)
            if value is None:
                value = known.get(name)
            if value is not None:
                doc[name] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        return json.dumps(doc, ensure_ascii=False, default=str)


def setup_logging(
    level: str,
    fmt: str = "text",
    *,
    text_format: str = TEXT_FORMAT,
    worker: int | None = None,
    stream: TextIO | None = None,
) -> None:
    """Configure the root logger once for this process (``fmt``: ``"text"`` or ``"json"``)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(worker=worker))
    else:
        handler.setFormatter(logging.Formatter(text_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
