"""What a run shows while it trains (rank 0 only): a rich progress bar over all steps, and one line
per epoch. ``console=None`` shows nothing (library use)."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Reporter:
    def __init__(self, console: Console | None, *, total_steps: int, done_steps: int, epochs: int) -> None:
        self.console, self.epochs = console, epochs
        self.progress = None
        if console is not None:
            self.progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self.task = self.progress.add_task("train", total=total_steps, completed=done_steps,
                                               epoch=0, epochs=epochs, loss="-")

    def __enter__(self) -> "Reporter":
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.stop()

    def step(self, *, epoch: int, completed: int, loss: float | None = None) -> None:
        """Move the bar to ``completed`` optimiser steps (called every ``log_every`` steps: the loss is a host sync)."""
        if self.progress is not None:
            fields = {} if loss is None else {"loss": f"{loss:.4f}"}
            self.progress.update(self.task, completed=completed, epoch=epoch, **fields)

    def epoch_done(self, row: dict) -> None:
        if self.console is None:
            return
        parts = [f"epoch {row['epoch']:>3}/{self.epochs}",
                 f"train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.3f}"]
        if "val_accuracy" in row:
            parts.append(f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.3f}")
        if row.get("srr_per_layer"):
            parts.append(f"μ_SRR(last) {row['srr_per_layer'][-1]:.3f}")
        parts.append(f"lr {row['lr']:.2e}")
        parts.append(f"{row['train_images_per_s']:.0f} img/s")
        self.log("  ".join(parts))

    def log(self, message: str) -> None:
        if self.console is None:
            return
        if self.progress is not None:
            self.progress.console.print(message, highlight=False)
        else:
            self.console.print(message, highlight=False)
