"""Callbacks of :func:`srr.train.train`: the per-epoch SRR measurement and the scalar loggers behind
``srr train --logger`` use the same hooks a user's callback does.

A callback overrides the hooks it needs; they run on rank 0 only, after the step or epoch is done
(the trainer is passed for reading: ``trainer.model``, ``trainer.eval_model`` (the plain model, also under
``--fsdp``, whose ``trainer.model`` is sharded), ``trainer.optimizer``, ``trainer.run_dir``, ``trainer.data``).
:func:`default_callbacks` is what a run installs unless told otherwise: the
measurement (HU24 §5, E4: μ_SRR of every layer on a fixed probe set, its keys in each epoch row, and
``srr_layers.png``) and the logger of ``config.logger``, which writes per-step scalars every ``every``
steps (loss, cross-entropy, SRR regulariser, learning rate, gradient norm, throughput) and the epoch rows.
"""
from __future__ import annotations

import abc
import csv
import json
from pathlib import Path

from srr._checks import check_choice, check_eps, check_int, check_lam

LOGGERS = ("jsonl", "csv", "tensorboard")


class Callback:
    """Hooks of the training loop; each default does nothing."""

    def on_train_start(self, trainer) -> None:
        pass

    def on_step_end(self, trainer, scalars: dict) -> None:
        """Every ``log_every`` optimiser steps (reading the scalars is a host sync, kept off the other steps).
        ``scalars``: step, epoch, loss, cross_entropy, srr_reg (None without regulariser), lr,
        grad_norm, images_per_s."""

    def on_epoch_metrics(self, trainer, row: dict) -> None:
        """The epoch's row after validation, before it is recorded: add measurements to it (they reach
        ``metrics.jsonl``, the epoch line, every ``on_epoch_end`` and the plots)."""

    def on_epoch_end(self, trainer, row: dict) -> None:
        """``row``: the epoch's ``metrics.jsonl`` row."""

    def on_plots(self, trainer, rows: list[dict]) -> list[Path]:
        """Write this callback's figures of the run's epoch ``rows`` into ``trainer.run_dir.plots``; return
        their paths (listed in ``summary.json``). Called at the end of the run, and when it diverges."""
        return []

    def on_train_end(self, trainer, result) -> None:
        pass


class SRRMeasurement(Callback):
    """μ_SRR (E4) of every layer's output on the run's probe images (``measure_samples`` training images)
    after each epoch: ``srr_per_layer`` (0-based) and ``srr_mean`` in the epoch row; ``srr_layers.png``."""

    def __init__(self, *, eps: float = 0.1, lam: float = 0.1):
        self.eps, self.lam = check_eps(eps, "eps"), check_lam(lam, "lam")

    def on_train_start(self, trainer) -> None:
        if trainer.data.probe is None:
            raise ValueError("SRRMeasurement needs probe images: measure_samples must be >= 1, got "
                             f"{trainer.config.measure_samples}")

    def on_epoch_metrics(self, trainer, row: dict) -> None:
        from .srr_terms import measure_layers

        per_layer = measure_layers(trainer.eval_model, trainer.data.probe, eps=self.eps, lam=self.lam,
                                   device=trainer.env.device)
        row["srr_per_layer"] = per_layer
        row["srr_mean"] = sum(per_layer) / len(per_layer)

    def on_plots(self, trainer, rows: list[dict]) -> list[Path]:
        from .plots import plot_srr_layers

        path = plot_srr_layers(rows, trainer.run_dir.plots / "srr_layers.png")
        return [path] if path is not None else []


class ScalarLogger(Callback):
    """Per-step scalars every ``every`` steps and every epoch row, to ``write(kind, scalars)``."""

    def __init__(self, *, every: int = 10):
        self.every = check_int(every, "log_every", minimum=1)

    def on_step_end(self, trainer, scalars: dict) -> None:
        if scalars["step"] % self.every == 0:
            self.write("step", scalars)

    def on_epoch_end(self, trainer, row: dict) -> None:
        self.write("epoch", row)

    def on_train_end(self, trainer, result) -> None:
        self.close()

    @abc.abstractmethod
    def write(self, kind: str, scalars: dict) -> None:
        """Record one ``step`` or ``epoch`` row (each logger's own format)."""

    def close(self) -> None:
        pass


class JSONLLogger(ScalarLogger):
    """``folder/log.jsonl``: one object per record, ``{"kind": "step"|"epoch", ...}``."""

    def __init__(self, folder: str | Path, *, every: int = 10):
        super().__init__(every=every)
        self.path = Path(folder) / "log.jsonl"

    def write(self, kind: str, scalars: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"kind": kind, **scalars}) + "\n")


class CSVLogger(ScalarLogger):
    """``folder/steps.csv`` and ``folder/epochs.csv``, one header each (lists, e.g. μ_SRR per layer,
    become one column per layer, 0-based: ``srr_per_layer_0``, ...)."""

    def __init__(self, folder: str | Path, *, every: int = 10):
        super().__init__(every=every)
        self.folder = Path(folder)

    def write(self, kind: str, scalars: dict) -> None:
        flat = {}
        for key, value in scalars.items():
            if isinstance(value, (list, tuple)):
                flat.update({f"{key}_{i}": v for i, v in enumerate(value)})
            else:
                flat[key] = value
        path = self.folder / f"{kind}s.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(flat), extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(flat)


class TensorBoardLogger(ScalarLogger):
    """``folder/tensorboard``: ``step/<name>`` and ``epoch/<name>`` scalars at the global step."""

    def __init__(self, folder: str | Path, *, every: int = 10):
        super().__init__(every=every)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError("--logger tensorboard needs the tensorboard package: pip install 'srr[tensorboard]' "
                             "(or use --logger jsonl or csv)") from None
        self.writer = SummaryWriter(str(Path(folder) / "tensorboard"))

    def write(self, kind: str, scalars: dict) -> None:
        step = scalars.get("step", 0)
        for key, value in scalars.items():
            if isinstance(value, (list, tuple)):
                for i, v in enumerate(value):
                    self.writer.add_scalar(f"{kind}/{key}/layer_{i}", v, step)
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                self.writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        self.writer.close()


def default_callbacks(config, run_dir: str | Path) -> list[Callback]:
    """What a run of ``config`` (a ``TrainConfig``) in the folder ``run_dir`` installs unless told otherwise
    (``train(..., defaults=False)``), before the caller's own callbacks: the :class:`SRRMeasurement` (when
    ``measure_samples > 0``) and the logger of ``config.logger``."""
    callbacks: list[Callback] = []
    if config.measure_samples > 0:
        callbacks.append(SRRMeasurement(eps=config.srr_eps, lam=config.srr_lam))
    if config.logger is not None:
        callbacks.append(build_logger(config.logger, run_dir, every=config.log_every))
    return callbacks


def build_logger(name: str, folder: str | Path, *, every: int) -> ScalarLogger:
    """The logger ``name`` (one of :data:`LOGGERS`) writing into ``folder``."""
    check_choice(name, "logger", LOGGERS)
    return {"jsonl": JSONLLogger, "csv": CSVLogger, "tensorboard": TensorBoardLogger}[name](folder, every=every)
