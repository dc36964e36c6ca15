"""Console hygiene for the generating commands: one note instead of a warning per image.

Our prompts are written to fit CLIP's 77 tokens by an estimate (:mod:`..engines.loop.prompt_text`);
a text encoder whose tokenizer splits words finer (the tiny test models' does) truncates the tail
and diffusers/transformers log one warning per prompt encoded. :func:`quiet_prompt_truncation`
drops those specific records while it is active and counts them, so the command can say so once.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

#: The messages dropped (diffusers' pipelines and transformers' tokenizers); every other record passes.
TRUNCATION_MESSAGES = ("can only handle sequences up to", "Token indices sequence length is longer than")


class TruncationCounter(logging.Filter):
    """Drops prompt-truncation warnings, counting them."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if any(text in record.getMessage() for text in TRUNCATION_MESSAGES):
            self.count += 1
            return False
        return True

    def note(self) -> str:
        """One line for the console ('' when nothing was truncated)."""
        if not self.count:
            return ""
        return (f"note: the text encoder truncated {self.count} prompt encoding(s) at its token limit (77 for CLIP); "
                "the loop writes prompts to fit ~75 CLIP tokens by an estimate, which a tokenizer that splits "
                "words finer can exceed. Those warnings were silenced; only the prompt's tail is lost.")


def _library_handlers() -> list[logging.Handler]:
    """The handlers diffusers and transformers log through (configured on their first use)."""
    handlers: list[logging.Handler] = []
    try:
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.get_logger("diffusers")
    except ImportError:  # pragma: no cover - diffusers is a dependency
        pass
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.get_logger("transformers")
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    for name in ("diffusers", "transformers", ""):
        handlers.extend(logging.getLogger(name).handlers)
    return handlers


@contextmanager
def quiet_prompt_truncation() -> Iterator[TruncationCounter]:
    """While active, prompt-truncation warnings are counted instead of printed."""
    counter = TruncationCounter()
    handlers = _library_handlers()
    for handler in handlers:
        handler.addFilter(counter)
    try:
        yield counter
    finally:
        for handler in handlers:
            handler.removeFilter(counter)
