"""How a run can stop early: a non-finite loss, or a signal (SIGTERM / Ctrl-C)."""
from __future__ import annotations

from pathlib import Path


class NonFiniteLossError(RuntimeError):
    """The loss (or the gradient norm) became NaN/Inf; the last good checkpoint is kept untouched."""

    def __init__(self, *, what: str, value: float, step: int, epoch: int, checkpoint: Path | None) -> None:
        self.what, self.value, self.step, self.epoch, self.checkpoint = what, value, step, epoch, checkpoint
        kept = (f"the last good checkpoint is {checkpoint}" if checkpoint is not None
                else "no checkpoint had been written yet")
        super().__init__(f"{what} became {value} at step {step} (epoch {epoch}); training stopped and {kept}. "
                         f"Try a lower --lr, --grad-clip, or turning off --amp")


class TrainingInterrupted(RuntimeError):
    """A signal stopped the run at a step boundary, after writing a checkpoint there."""

    def __init__(self, *, signal_name: str, step: int, epoch: int, checkpoint: Path, run_dir: Path) -> None:
        self.signal_name, self.step, self.epoch = signal_name, step, epoch
        self.checkpoint, self.run_dir = checkpoint, run_dir
        super().__init__(f"{signal_name} received: stopped at step {step} (epoch {epoch}) and saved {checkpoint}; "
                         f"continue with: srr train --out {run_dir} --resume")
