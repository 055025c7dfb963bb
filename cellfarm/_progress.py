"""A rich progress bar behind the :class:`lake.Progress` callback."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

_BYTES = {"hash", "download"}


class RichProgress:
    """Context manager; one bar per stage (hash, download, write X, commit...).

    Bars are drawn only on a terminal, so scripts and logs get the result lines alone.
    """

    def __init__(self, console: Console | None = None) -> None:
        console = console or Console(stderr=True)
        self._bar = Progress(
            TextColumn("[bold]{task.description:<10}"),
            BarColumn(),
            TextColumn("{task.fields[amount]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
            disable=not console.is_terminal,
        )
        self._tasks: dict[str, TaskID] = {}

    def __enter__(self) -> RichProgress:
        self._bar.start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._bar.stop()

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        if stage not in self._tasks:
            self._tasks[stage] = self._bar.add_task(stage, total=total, amount="")
        task = self._tasks[stage]
        if stage in _BYTES:
            amount = f"{done / 2**20:,.0f}/{(total or 0) / 2**20:,.0f} MiB"
        else:
            amount = f"{done:,}/{total or 0:,}"
        self._bar.update(task, completed=done, total=total, amount=amount)
