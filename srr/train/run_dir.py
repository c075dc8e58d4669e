"""The run folder: where a run keeps everything it needs to be read, plotted and resumed.

Layout::

    <out>/
        config.json            the resolved TrainConfig
        metrics.jsonl          one JSON object per epoch (train/val loss and accuracy, μ_SRR per
                               layer, learning rate, throughput)
        summary.json           final test metrics, written when the run ends
        checkpoints/latest.pt  model, optimiser, scheduler, RNG and data-order state (atomic)
        checkpoints/best.pt    the same, at the epoch of best validation accuracy
        checkpoints/sharded/   --fsdp runs: model and optimiser shards (srr/train/sharded_checkpoint.py)
        plots/curves.png       loss and accuracy per epoch
        plots/srr_layers.png   μ_SRR per layer, per epoch
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from srr.models.checkpoints import umask_mode


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename, so a
    reader (or a crash) sees either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, umask_mode())  # readable as the umask allows, not mkstemp's 0600
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def default_run_name(model: str, dataset: str) -> str:
    return f"{model}-{dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass(frozen=True)
class RunDir:
    """Paths of one run folder (nothing is created until asked)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def latest(self) -> Path:
        return self.checkpoints / "latest.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def create(self) -> None:
        for folder in (self.root, self.checkpoints, self.plots):
            folder.mkdir(parents=True, exist_ok=True)

    def write_config(self, config_dict: dict) -> None:
        atomic_write_text(self.config, json.dumps(config_dict, indent=2) + "\n")

    def read_metrics(self) -> list[dict]:
        """The epochs logged so far (an unreadable last line, from a crash mid-write, is skipped)."""
        if not self.metrics.exists():
            return []
        rows = []
        for line in self.metrics.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    def append_metrics(self, row: dict) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate_metrics(self, *, last_epoch: int) -> list[dict]:
        """Keep only epochs ``<= last_epoch`` (those the checkpoint being resumed has seen)."""
        rows = [row for row in self.read_metrics() if row.get("epoch", 0) <= last_epoch]
        atomic_write_text(self.metrics, "".join(json.dumps(row) + "\n" for row in rows))
        return rows

    def write_summary(self, summary: dict) -> None:
        atomic_write_text(self.summary, json.dumps(summary, indent=2) + "\n")
