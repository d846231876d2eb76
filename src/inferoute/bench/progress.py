"""Progress of a benchmark run on the terminal: one rich progress bar per load stage."""

from __future__ import annotations

from typing import Any, Self


class StageProgress:
    """A rich progress bar per stage (on stderr), fed by (stage, done, total) callbacks."""

    def __init__(self, labels: list[str], enabled: bool = True) -> None:
        self.labels = labels
        self.enabled = enabled
        self._progress: Any = None
        self._tasks: dict[int, Any] = {}

    def __enter__(self) -> Self:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                      MofNCompleteColumn(), TimeElapsedColumn(),
                                      console=Console(stderr=True), transient=False)
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def __call__(self, stage: int, done: int, total: int) -> None:
        if self._progress is None:
            return
        task = self._tasks.get(stage)
        if task is None:
            label = self.labels[stage] if stage < len(self.labels) else ""
            task = self._tasks[stage] = self._progress.add_task(
                f"stage {stage} {label}", total=total or None)
        self._progress.update(task, completed=done)
