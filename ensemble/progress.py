"""Progress that says what is happening: a step label (`[2/6] member mnv2_grocery`) set by the
caller and put in front of every progress bar and announcement made inside it."""

from __future__ import annotations

import contextvars
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

from .distributed import world

_step: contextvars.ContextVar[str] = contextvars.ContextVar("ens_step", default="")


@contextmanager
def step(name: str) -> Iterator[None]:
    """Label every bar and announcement inside the block with `name`."""
    token = _step.set(name)
    try:
        yield
    finally:
        _step.reset(token)


def label(text: str) -> str:
    """`text` behind the current step's name."""
    return f"{_step.get()} {text}" if _step.get() else text


def announce(text: str) -> None:
    """One line on stderr (main process only), printed above any running bar."""
    if world().main:
        tqdm.write(label(text), file=sys.stderr)
