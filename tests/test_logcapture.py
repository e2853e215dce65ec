"""Libraries' log records kept off the terminal: the one capture helper, and optimize's use of it
for its dependencies. Real loggers and handlers; no processes."""

from __future__ import annotations

import logging

import pytest

from edgekit.api import _dependency_logs, _dependency_note
from edgekit.logcapture import logs_captured


class Seen(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def root_seen():
    """A handler on the root logger: what would reach the terminal."""
    seen = Seen()
    logging.root.addHandler(seen)
    yield seen
    logging.root.removeHandler(seen)


def test_records_at_the_level_are_kept_and_nothing_reaches_the_root(root_seen):
    logger = logging.getLogger("edgekit_test.capture")
    logger.setLevel(logging.DEBUG)
    own = Seen()
    logger.addHandler(own)
    try:
        with logs_captured([logger], logging.WARNING) as records:
            logger.info("chatter")
            logger.warning("kept %s", "this")
        assert [r.getMessage() for r in records] == ["kept this"]
        assert root_seen.messages == [] and own.messages == []
        logger.warning("after")  # the logger prints as before once outside
        assert own.messages == ["after"] and root_seen.messages == ["after"]
        assert logger.handlers == [own] and logger.propagate
    finally:
        logger.removeHandler(own)


def test_handlers_come_back_when_the_body_raises(root_seen):
    logger = logging.getLogger("edgekit_test.raises")
    with pytest.raises(RuntimeError), logs_captured([logger]) as records:
        logger.error("failed: %s", "why")
        raise RuntimeError("boom")
    assert [r.getMessage() for r in records] == ["failed: why"]
    assert logger.handlers == [] and logger.propagate
    logger.error("printed again")
    assert root_seen.messages == ["printed again"]


def test_dependency_warnings_are_summarised_in_a_note_and_kept_off_the_terminal(root_seen):
    with _dependency_logs(debug=False) as kept:
        logging.getLogger("onnx").warning("an opset %d warning", 17)
        logging.getLogger("torch").info("progress, not kept")
    assert root_seen.messages == []
    (note,) = _dependency_note(kept)
    assert "gave 1 warning(s)" in note and "onnx: an opset 17 warning" in note
    with _dependency_logs(debug=True) as kept:  # --debug: everything as the libraries print it
        logging.getLogger("onnx").warning("shown")
    assert kept == [] and root_seen.messages == ["shown"]
    assert _dependency_note([]) == []
