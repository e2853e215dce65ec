"""Log records of libraries kept for edgekit's own messages instead of reaching the terminal."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator


class _Records(logging.Handler):
    def __init__(self, level: int):
        super().__init__(level)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def logs_captured(
    loggers: Iterable[logging.Logger], level: int = logging.NOTSET
) -> Iterator[list[logging.LogRecord]]:
    """The records `loggers` emit at `level` or above, collected into the list yielded: while
    inside, each logger's only handler is the collector and nothing propagates to the root
    logger (the terminal); the handlers and propagation are restored on the way out."""
    capture = _Records(level)
    saved = [(logger, logger.handlers, logger.propagate) for logger in loggers]
    try:
        for logger, _, _ in saved:
            logger.handlers, logger.propagate = [capture], False
        yield capture.records
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
