"""Progress reporting without a UI dependency: core functions take an
optional ``progress`` callable and call it as

    progress(task, done, total, **fields)

e.g. ``progress("k-means", 3, 25, objective=0.41)``. ``total`` may be None
when unknown. The CLI turns these calls into a rich progress bar on stderr;
tests and the pipeline may pass their own or nothing."""

from __future__ import annotations

from typing import Any, Protocol


class Progress(Protocol):
    def __call__(self, task: str, done: int, total: int | None, **fields: Any) -> None: ...


def no_progress(task: str, done: int, total: int | None, **fields: Any) -> None:
    """The default: report nothing."""
