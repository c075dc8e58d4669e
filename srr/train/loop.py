"""``train(config) -> RunResult``: the training loop behind ``srr train``.

Loss per step (HU24 §6, MATH.md §6): label-smoothed cross-entropy plus, when ``srr_weight > 0``,
``η_reg · mean_{ℓ∈S} μ_SRR`` of the chosen layers on the (global) batch. AdamW/Adam/SGD/Lion with
linear warm-up and cosine decay, gradient clipping, optional bfloat16 autocast and
``torch.compile``. Under ``torchrun``: DistributedDataParallel, each rank a strided share of one
shared permutation per epoch, rank-0-only output and checkpoints; evaluation on every rank, each
scoring its shard (srr/train/evaluate.py). ``--fsdp``: FSDP2 instead of DDP (srr/train/fsdp.py), sharded
checkpoints through ``torch.distributed.checkpoint`` (srr/train/sharded_checkpoint.py), evaluation and
measurement on the gathered replica (every rank holds one and scores its shard).

Gradient accumulation (``grad_accum = K``, or derived from ``global_batch``): one optimiser step
runs K micro-steps of ``batch_size`` images; micro-step i's loss is weighted ``b_i / N`` (its images
over the step's), so the summed gradient is that of the mean loss over the step's K·B images — the
gradient of one batch of K·B. Under DDP the non-final micro-steps run in ``no_sync()`` (one gradient
all-reduce per optimiser step). The regulariser's μ_SRR is per sample (a mean over the global batch of
each image's own tokens), so its accumulated gradient is that of the K·B batch too; each micro-step's
global statistics are over ``batch_size · world_size`` images. The schedule, ``global_step``,
``checkpoint_every``, ``log_every`` and the EMA count optimiser steps.

Host syncs: the per-step loss, accuracy and regulariser sums stay on the device; the host reads them
every ``log_every`` optimiser steps (progress bar, callbacks' ``on_step_end``), at checkpoints and at
epoch ends. The NaN guard rides on the same cadence: a non-finite loss or gradient norm is recorded on
the device when it happens and raised at the next check, so it is detected at most ``log_every``
steps late (the error names the first bad step) and always before a checkpoint is written: no saved
checkpoint holds the weights of a non-finite step. A SIGTERM / Ctrl-C is honoured at the next step in
a single process, at the next check under DDP (where the ranks must agree).

Runs lose nothing: the run folder (srr/train/run_dir.py) gets ``config.json`` at the start, one
``metrics.jsonl`` row and an atomic ``checkpoints/latest.pt`` per epoch (and every
``checkpoint_every`` steps), ``best.pt`` on each new best validation accuracy, plots and
``summary.json`` at the end. ``resume=True`` restores model, optimiser, scheduler, RNG and
data position, so the resumed run ends with the weights the uninterrupted one would have had.
With ``ema_decay``, an EMA of the weights (srr/train/ema.py) is evaluated beside them each epoch and
at the end (``*_ema`` keys) and saved in every checkpoint (``extra["ema"]``), and restored on resume.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from srr.models import create_model

from . import distributed as D
from .callbacks import Callback, default_callbacks
from .checkpoint import copy_atomic, save_training_checkpoint
from .config import TrainConfig
from .data import RunData, TrainBatches, batch_mix, load_run_data
from .ema import ModelEMA
from .errors import NonFiniteLossError, TrainingInterrupted
from .evaluate import autocast, evaluate
from .fsdp import ShardedModel
from .guards import StopRequest, cpu_threads, deterministic_algorithms, stop_on_signals
from .optim import build_optimizer, build_schedule, resolve_grad_accum, scaled_lr, warmup_note
from .plots import plot_curves
from .report import Reporter
from .resume import RESUMABLE, RUN_CONTROL, check_resume, checkpoint_to_resume, resumable_changes  # noqa: F401 (re-exported)
from .run_dir import RunDir, default_run_name
from .sharded_checkpoint import load_sharded, prune_sharded, save_sharded
from .srr_terms import build_regularizer
from .state import capture_rng, restore_rank_rng, seed_everything

EVAL_BATCH = 512


@dataclass
class RunResult:
    """What a finished run reports (every rank gets the same numbers)."""

    run_dir: Path
    config: TrainConfig
    model: nn.Module  # the trained model, unwrapped (no DDP / compile)
    epochs: int
    global_step: int
    test_loss: float
    test_accuracy: float
    best_val_accuracy: float | None
    best_epoch: int | None
    srr_per_layer: list[float]
    train_time_s: float
    train_images_per_s: float  # whole training step, all ranks
    loader_images_per_s: float  # data loading alone (rank 0)
    model_images_per_s: float  # forward + backward + update alone (rank 0)
    metrics: list[dict] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    already_complete: bool = False  # a resumed run that had trained all its epochs: nothing was done or written
    test_loss_ema: float | None = None  # the EMA weights' (None without ema_decay)
    test_accuracy_ema: float | None = None

    def summary(self) -> dict:
        skip = {"model", "metrics", "config", "already_complete"}
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        out["run_dir"] = str(self.run_dir)
        out["plots"] = [str(p) for p in self.plots]
        out["srr_last_layer"] = self.srr_per_layer[-1] if self.srr_per_layer else None
        return out


@dataclass
class EpochSums:
    """Running sums of the epoch in progress (stored in mid-epoch checkpoints)."""

    loss: float = 0.0  # Σ batch_size · cross-entropy (with label smoothing)
    correct: float = 0.0
    images: float = 0.0
    reg: float = 0.0  # Σ regulariser term over steps
    steps: float = 0.0
    fetch_s: float = 0.0
    model_s: float = 0.0
    wall_s: float = 0.0

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def fold(self, device_sums: torch.Tensor) -> None:
        """Add the device-side running sums ``[loss, correct, reg]`` (one host sync) and zero them."""
        loss, correct, reg = device_sums.tolist()
        self.loss, self.correct, self.reg = self.loss + loss, self.correct + correct, self.reg + reg
        device_sums.zero_()


def _at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    """bf16 logits (autocast) up to float32 for the loss; float64 ones (the float64 tests) stay."""
    return logits if logits.dtype == torch.float64 else logits.float()


def train(config: TrainConfig, *, console: Console | None = None, callbacks: Sequence[Callback] = (),
          defaults: bool = True) -> RunResult:
    """Train as ``config`` says; output (progress bar, epoch lines) goes to ``console`` on rank 0.
    ``callbacks`` (:class:`srr.train.Callback`) run on rank 0 after each step and epoch, at the start and
    the end, after :func:`srr.train.default_callbacks` (the per-epoch SRR measurement, the logger of
    ``config.logger``); ``defaults=False`` runs ``callbacks`` alone.

    Raises ``ValueError``/``FileNotFoundError`` for bad options, data or run folders,
    :class:`NonFiniteLossError` when the loss diverges, :class:`TrainingInterrupted` after
    saving on SIGTERM/Ctrl-C. A text dataset trains a language model: :func:`srr.train.lm_loop.train_lm`,
    which returns an ``LMRunResult``.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    from srr.data import is_text_dataset

    if is_text_dataset(config.dataset):
        from .lm_loop import train_lm

        return train_lm(config, console=console, callbacks=callbacks, defaults=defaults)
    env = D.setup(config.device, group_of_one=config.fsdp)
    try:
        with deterministic_algorithms(config.deterministic), cpu_threads(config.threads):
            trainer = _Trainer(config, env, console, callbacks, defaults=defaults)
            with stop_on_signals() as stop:  # only once training starts: Ctrl-C during setup just stops
                trainer.stop = stop
                return trainer.run()
    finally:
        D.teardown(env)


class _Trainer:
    def __init__(self, config: TrainConfig, env: D.DistEnv, console: Console | None,
                 callbacks: Sequence[Callback] = (), *, defaults: bool = True) -> None:
        self.config, self.env = config, env
        self.stop = StopRequest()  # replaced by the signal-driven one in train()
        self.console = console if env.is_main else None
        root = config.out or str(Path("runs") / default_run_name(config.model, config.dataset))
        self.run_dir = RunDir(Path(D.broadcast_object(env, root)))
        self.checkpoint = checkpoint_to_resume(self.run_dir, config, first_checkpoint="finished an epoch")

        seed_everything(config.seed)  # identical data and initial weights on every rank
        self.data: RunData = load_run_data(config)
        info = self.data.info
        init = config.init_from if self.checkpoint is None else None  # a resumed run has its own weights
        self.model = create_model(
            config.model, num_classes=info.num_classes, image_size=info.image_size, in_chans=info.in_chans,
            pretrained=init, **config.model_overrides(),
        ).to(env.device)
        if config.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.fsdp: ShardedModel | None = None  # --fsdp: self.model is sharded in place, before the optimiser sees it
        if config.fsdp:
            self.fsdp = ShardedModel(self.model, env, mixed=config.fsdp_mixed)
        self.batches = TrainBatches(
            self.data.train, batch_size=config.batch_size, seed=config.seed, rank=env.rank,
            world_size=env.world_size, num_workers=config.num_workers, pin_memory=env.device.type == "cuda",
            prefetch_factor=config.prefetch_factor, repeats=config.repeated_aug,
            mix=batch_mix(config, info.num_classes),
        )
        self.grad_accum = resolve_grad_accum(config, world_size=env.world_size)
        self.global_batch = config.batch_size * env.world_size * self.grad_accum
        self.lr = scaled_lr(config.lr, rule=config.lr_scaling, global_batch=self.global_batch)
        self.steps_per_epoch = math.ceil(len(self.batches) / self.grad_accum)  # optimiser steps
        self.optimizer = build_optimizer(self.model, config, lr=self.lr)
        self.scheduler = build_schedule(self.optimizer, config, steps_per_epoch=self.steps_per_epoch)
        # The EMA copy is taken before the regulariser hooks the model, so the copy carries no hooks.
        self.ema = (ModelEMA(self.model, decay=config.ema_decay, warmup=config.ema_warmup)
                    if config.ema_decay is not None else None)
        self.regularizer = build_regularizer(self.model, config)
        if self.fsdp is not None:
            self.fsdp.keep_gathered(self.regularizer)
        self.forward_model: nn.Module = self.model
        self.ddp = None
        if env.distributed and self.fsdp is None:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [env.device] if env.device.type == "cuda" else None
            self.ddp = self.forward_model = DistributedDataParallel(self.model, device_ids=device_ids)
        if config.compile:
            self.forward_model = torch.compile(self.forward_model)

        self.epoch, self.batch_in_epoch, self.global_step = 0, 0, 0
        self.best_val, self.best_epoch = None, None
        self.sums = EpochSums()
        self.device_sums = torch.zeros(3, dtype=torch.float64, device=env.device)  # Σ loss·b, Σ correct, Σ reg
        # first non-finite step on this rank: [step, epoch, what (1 CE, 2 loss, 3 grad norm), value]; 0: none
        self.nonfinite = torch.zeros(4, dtype=torch.float64, device=env.device)
        self.rows: list[dict] = []
        self.step_losses: list[tuple[float, float]] = []  # (epochs reached, loss) of each step of this process
        self.unread_losses: list[tuple[float, torch.Tensor]] = []  # steps since the last host read (device tensors)
        if self.checkpoint is not None:
            self._restore(self.checkpoint)
        else:
            seed_everything(config.seed + env.rank)  # rank-offset draws (dropout, augmentation)
            if env.is_main:
                self.run_dir.create()
                self.run_dir.write_config({**config.to_dict(), "resolved": self._resolved()})
                self.run_dir.metrics.unlink(missing_ok=True)  # rows of an attempt that never checkpointed
        self.callbacks: list[Callback] = []
        if env.is_main:
            self.callbacks = [*(default_callbacks(config, self.run_dir.root) if defaults else []), *callbacks]
        D.barrier(env)

    # ----- run folder and resume ------------------------------------------------------------
    def _resolved(self) -> dict:
        """What the run's options resolved to (``config.json`` → ``"resolved"``, a record only)."""
        import platform
        from importlib.metadata import PackageNotFoundError, version

        try:
            srr_version = version("srr")
        except PackageNotFoundError:
            srr_version = None
        device = self.env.device
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or device.type
        return {
            "model": self.model.config.to_dict(), "device": str(device), "device_name": name,
            "world_size": self.env.world_size, "out": str(self.run_dir.root.resolve()),
            "grad_accum": self.grad_accum, "global_batch": self.global_batch, "lr": self.lr,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "versions": {"srr": srr_version, "torch": torch.__version__, "python": platform.python_version()},
        }

    @property
    def eval_model(self) -> nn.Module:
        """The plain model (no DDP / FSDP / compile) that evaluation, measurement and checkpoints read; under
        ``--fsdp`` the replica gathered at the last evaluation or checkpoint."""
        return self.model if self.fsdp is None else self.fsdp.replica

    def _restore(self, checkpoint: dict) -> None:
        extra = checkpoint["extra"]
        if self.fsdp is not None:  # model and optimiser from the sharded folder, at any world size
            if not extra.get("sharded"):
                raise ValueError(f"--fsdp cannot resume {self.run_dir.latest}: it was written by a run without "
                                 f"--fsdp; resume it without --fsdp")
            load_sharded(self.model, self.optimizer, self.run_dir.checkpoints, extra["sharded"])
            self.fsdp.forget_gathered()
        else:
            self.model.load_state_dict(checkpoint["state_dict"])
            self.optimizer.load_state_dict(extra["optimizer"])
        schedule, saved = dict(extra["scheduler"]), extra.get("train_config", {})
        changed = resumable_changes(saved, self.config)
        if "epochs" in changed:
            schedule["total_steps"] = self.config.epochs * self.steps_per_epoch
        self.scheduler.load_state_dict(schedule)
        if changed and self.env.is_main:  # applied, and recorded
            self.run_dir.write_config({**self.config.to_dict(), "resolved": self._resolved()})
        progress = extra["progress"]
        self.epoch, self.batch_in_epoch = int(progress["epoch"]), int(progress["batch_in_epoch"])
        self.global_step = int(progress["global_step"])
        self.best_val, self.best_epoch = progress.get("best_val_accuracy"), progress.get("best_epoch")
        self.sums = EpochSums(**progress.get("epoch_sums", {}))
        if self.ema is not None:
            if "ema" in extra:
                self.ema.load_state(extra["ema"])
            else:  # a checkpoint from before EMA was turned on: start the average here
                self.ema = ModelEMA(self.model, decay=self.config.ema_decay, warmup=self.config.ema_warmup)
        saved_world = int(progress.get("world_size", 1))
        if saved_world != self.env.world_size and self.batch_in_epoch:
            raise ValueError(f"the checkpoint was written mid-epoch by {saved_world} process(es); resume it with "
                             f"the same number of processes, got {self.env.world_size}")
        restore_rank_rng(extra["rng"], rank=self.env.rank, world_size=self.env.world_size, seed=self.config.seed,
                         step=self.global_step)
        if self.env.is_main:
            complete = self.epoch >= self.config.epochs and not self.batch_in_epoch  # run() changes nothing then
            self.rows = (self.run_dir.read_metrics() if complete
                         else self.run_dir.truncate_metrics(last_epoch=self.epoch))

    def _save(self, *, best: bool = False) -> None:
        """Write ``latest.pt`` (and ``best.pt``): collective under DDP (it gathers every rank's RNG).
        The NaN guard runs first: a checkpoint never holds the weights of a non-finite step."""
        self._check_finite()
        self.sums.fold(self.device_sums)
        rng = D.gather_objects(self.env, capture_rng())
        sharded = None
        if self.fsdp is not None:  # collective: every rank writes its shards, then the replica is gathered
            sharded = save_sharded(self.model, self.optimizer, self.run_dir.checkpoints, step=self.global_step,
                                   env=self.env)
            self.fsdp.gather(self.global_step)
        if self.env.is_main:
            progress = {
                "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "global_step": self.global_step,
                "best_val_accuracy": self.best_val, "best_epoch": self.best_epoch,
                "world_size": self.env.world_size, "epoch_sums": self.sums.as_dict(),
            }
            save_training_checkpoint(
                self.run_dir.latest, model=self.eval_model, optimizer=self.optimizer, scheduler=self.scheduler,
                progress=progress, rng=rng, train_config=self.config.to_dict(), sharded=sharded,
                ema=self.ema.state() if self.ema is not None else None,
            )
            if sharded is not None:
                prune_sharded(self.run_dir.checkpoints, keep=sharded)
            if best:
                copy_atomic(self.run_dir.latest, self.run_dir.best)
        D.barrier(self.env)

    # ----- training -------------------------------------------------------------------------
    def run(self) -> RunResult:
        config = self.config
        steps_per_epoch = self.steps_per_epoch
        if self.checkpoint is not None and self.epoch >= config.epochs and self.batch_in_epoch == 0:
            return self._complete()
        self._header()
        note = warmup_note(config, steps_per_epoch=steps_per_epoch)
        if note and self.checkpoint is None and self.env.is_main:  # a resumed run has its schedule already
            logging.getLogger("srr").info(note)
        reporter = Reporter(self.console, total_steps=config.epochs * steps_per_epoch,
                            done_steps=self.global_step, epochs=config.epochs)
        if self.checkpoint is not None:
            reporter.log(f"resuming {self.run_dir.root} at epoch {self.epoch + 1}, step {self.global_step}")
        for callback in self.callbacks:
            callback.on_train_start(self)
        try:
            with reporter:
                while self.epoch < config.epochs:
                    self._train_epoch(reporter)
                    self._end_epoch(reporter)
        except NonFiniteLossError:
            self._finish_plots()
            raise
        finally:
            if self.regularizer is not None and hasattr(self.regularizer, "close"):
                self.regularizer.close()
        return self._finish()

    def _train_epoch(self, reporter: Reporter) -> None:
        config, device, accum = self.config, self.env.device, self.grad_accum
        self.forward_model.train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = config.grad_clip if config.grad_clip is not None else math.inf
        per_rank, batch, micro_total = self.batches.sampler.num_samples, config.batch_size, len(self.batches)
        s = self.sums
        epoch_start = time.perf_counter()
        fetch_start = epoch_start
        step_ce = step_loss = step_reg = None
        step_start = epoch_start
        for images, labels in self.batches.epoch(self.epoch, start=self.batch_in_epoch):
            micro = self.batch_in_epoch  # this micro-batch's index in the epoch
            first, last = micro % accum == 0, micro % accum == accum - 1 or micro == micro_total - 1
            group_start = micro - micro % accum
            group_images = min((group_start + accum) * batch, per_rank) - group_start * batch  # N of this step
            images = images.to(device, non_blocking=True)  # (B, C, H, W)
            labels = torch.as_tensor(labels).to(device, non_blocking=True)  # (B,), or (B, classes) soft targets (mixup)
            n = labels.shape[0]
            weight = n / group_images  # b_i / N: the K micro-losses sum to the mean over the step's images
            fetched = time.perf_counter()
            if first:
                self.optimizer.zero_grad(set_to_none=True)
                step_ce = step_loss = step_reg = torch.zeros((), device=device)
                step_start = fetch_start
            sync = self.ddp is None or last
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                with autocast(device, config.amp):
                    logits = self.forward_model(images)  # (B, classes)
                logits32 = _at_least_float32(logits)
                targets = labels.to(logits32.dtype) if labels.is_floating_point() else labels
                ce = F.cross_entropy(logits32, targets, label_smoothing=config.label_smoothing)
                reg = self.regularizer() if self.regularizer is not None else None
                loss = ce if reg is None else ce + reg
                (loss * weight).backward()
            step_ce = step_ce + ce.detach() * weight
            step_loss = step_loss + loss.detach() * weight
            self.device_sums[0] += ce.detach().double() * n
            hard = labels.argmax(-1) if labels.ndim == 2 else labels  # a mixed image counts as its larger share
            self.device_sums[1] += (logits.detach().argmax(-1) == hard).sum()
            if reg is not None:
                self.device_sums[2] += reg.detach().double() * weight
                step_reg = step_reg + reg.detach() * weight
            s.images += n
            self.batch_in_epoch += 1
            if not last:
                s.fetch_s += fetched - fetch_start
                s.model_s += time.perf_counter() - fetched
                fetch_start = time.perf_counter()
                continue
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            self._record_nonfinite(step_ce, step_loss, grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.global_step += 1
            if self.ema is not None:
                self.ema.update(self.model, self.global_step)
            s.steps += 1
            now = time.perf_counter()
            s.fetch_s += fetched - fetch_start
            s.model_s += now - fetched
            self.unread_losses.append((self.epoch + self.batch_in_epoch / len(self.batches), step_loss))
            log_step = self.global_step % config.log_every == 0
            asked, stop = bool(self.stop), False  # under DDP a stop waits for the next check: ranks must agree
            if log_step or (asked and self.ddp is None):
                stop = self._check_finite(stop=asked)  # the only host sync of the step, every log_every steps
            if log_step:
                self._read_losses()
                loss_value = self.step_losses[-1][1]
                reporter.step(epoch=self.epoch + 1, loss=loss_value, completed=self.global_step)
                scalars = {"step": self.global_step, "epoch": self.epoch + 1, "loss": loss_value,
                           "cross_entropy": step_ce.item(), "srr_reg": step_reg.item() if reg is not None else None,
                           "lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm.item(),
                           "images_per_s": group_images / max(now - step_start, 1e-9)}
                for callback in self.callbacks:
                    callback.on_step_end(self, scalars)
            if stop:
                s.wall_s += now - epoch_start
                self._save()
                raise TrainingInterrupted(signal_name=self.stop.signal_name or "a signal on another rank",
                                          step=self.global_step, epoch=self.epoch + 1,
                                          checkpoint=self.run_dir.latest, run_dir=self.run_dir.root)
            if (config.checkpoint_every and self.global_step % config.checkpoint_every == 0
                    and self.batch_in_epoch < len(self.batches)):
                s.wall_s += time.perf_counter() - epoch_start
                self._save()
                epoch_start = time.perf_counter()
            fetch_start = time.perf_counter()
        reporter.step(epoch=self.epoch + 1, completed=self.global_step)
        self.sums.wall_s += time.perf_counter() - epoch_start

    def _read_losses(self) -> None:
        """Move the losses of the steps since the last read to ``step_losses`` (the per-step curve), in one
        host sync."""
        if self.unread_losses:
            values = torch.stack([loss for _, loss in self.unread_losses]).tolist()
            self.step_losses += [(at, v) for (at, _), v in zip(self.unread_losses, values)]
            self.unread_losses = []

    def _record_nonfinite(self, ce: torch.Tensor, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Remember (on the device, no sync) the first optimiser step whose cross-entropy, loss or gradient
        norm is not finite; :meth:`_check_finite` raises it."""
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: the norm is a DTensor (every rank calls this: a collective)
            grad_norm = grad_norm.full_tensor()
        bad_ce, bad_loss = ~torch.isfinite(ce), ~torch.isfinite(loss)
        bad = bad_ce | bad_loss | ~torch.isfinite(grad_norm)
        what = torch.where(bad_ce, 1.0, torch.where(bad_loss, 2.0, 3.0))
        value = torch.where(bad_ce, ce, torch.where(bad_loss, loss, grad_norm)).double()
        at = lambda x: torch.full((), float(x), dtype=torch.float64, device=ce.device)  # noqa: E731 (a fill, no copy)
        record = torch.stack([at(self.global_step + 1), at(self.epoch + 1), what.double(), value])
        fresh = bad & (self.nonfinite[0] == 0)
        self.nonfinite = torch.where(fresh, record, self.nonfinite)

    def _check_finite(self, *, stop: bool = False) -> bool:
        """Raise :class:`NonFiniteLossError` if any rank recorded a non-finite step; return whether any
        rank was asked to stop (under DDP both are agreed on by one small all-reduce)."""
        step, epoch, what, value = self.nonfinite.tolist()
        bad, mine = step > 0, step > 0
        if self.env.distributed:
            flags = D.all_reduce_sum(self.env, torch.tensor([float(bad), float(stop)], device=self.env.device))
            bad, stop = bool(flags[0] > 0), bool(flags[1] > 0)
        if bad:
            names = {1: "the cross-entropy", 2: "the loss", 3: "the gradient norm"}
            raise NonFiniteLossError(
                what=names[int(what)] if mine else "the loss on another rank",
                value=value if mine else math.nan,
                step=int(step) if mine else self.global_step, epoch=int(epoch) if mine else self.epoch + 1,
                checkpoint=self.run_dir.latest if self.run_dir.latest.exists() else None,
            )
        return stop

    def _end_epoch(self, reporter: Reporter) -> None:
        env, s = self.env, self.sums
        self._check_finite()  # before anything of this epoch is recorded
        s.fold(self.device_sums)
        self._read_losses()
        totals = torch.tensor([s.loss, s.correct, s.images, s.reg, s.steps], dtype=torch.float64)
        totals = D.all_reduce_sum(env, totals.to(env.device)).cpu().tolist()
        loss_sum, correct, images, reg_sum, steps = totals
        row = {
            "epoch": self.epoch + 1,
            "step": self.global_step,
            "lr": self.scheduler.get_last_lr()[0],
            "train_loss": loss_sum / max(images, 1),
            "train_accuracy": correct / max(images, 1),
            "srr_reg": reg_sum / max(steps, 1) if self.regularizer is not None else None,
        }
        improved = False
        if self.fsdp is not None:  # collective: the replica that every rank evaluates and rank 0 measures
            self.fsdp.gather(self.global_step)
        if self.data.val is not None:  # every rank scores its shard: the same numbers on every rank
            val = self._evaluate(self.eval_model, self.data.val)
            row["val_loss"], row["val_accuracy"] = val["loss"], val["accuracy"]
            if self.ema is not None:
                val_ema = self._evaluate(self.ema.module, self.data.val)
                row["val_loss_ema"], row["val_accuracy_ema"] = val_ema["loss"], val_ema["accuracy"]
            improved = self.best_val is None or val["accuracy"] > self.best_val  # best.pt: the raw weights'
            if improved:
                self.best_val, self.best_epoch = val["accuracy"], self.epoch + 1
        if env.is_main:
            for callback in self.callbacks:
                callback.on_epoch_metrics(self, row)
            row.update(
                epoch_time_s=s.wall_s,
                train_images_per_s=images / max(s.wall_s, 1e-9),
                loader_images_per_s=s.images / max(s.fetch_s, 1e-9),
                model_images_per_s=s.images / max(s.model_s, 1e-9),
                world_size=env.world_size,
                time=time.time(),
            )
            self.run_dir.append_metrics(row)
            self.rows.append(row)
            reporter.epoch_done(row)
            for callback in self.callbacks:
                callback.on_epoch_end(self, row)
        self.epoch += 1
        self.batch_in_epoch = 0
        self.sums = EpochSums()
        self._save(best=improved)


    def _complete(self) -> RunResult:
        """A resumed run that has trained all its epochs: say so and change nothing (no training, no
        evaluation, the summary and plots as they were)."""
        if self.console is not None:
            self.console.print(f"the run in {self.run_dir.root} is complete ({self.epoch}/{self.config.epochs} "
                               f"epochs, step {self.global_step}); nothing to do (pass a larger --epochs to train "
                               f"on)", highlight=False)
        summary = {}
        if self.env.is_main and self.run_dir.summary.is_file():
            summary = json.loads(self.run_dir.summary.read_text())
        summary = D.broadcast_object(self.env, summary)
        keep = {f.name for f in fields(RunResult)} - {"run_dir", "config", "model", "metrics", "plots",
                                                      "already_complete"}
        values = {k: summary.get(k) for k in keep}
        values.update(epochs=self.epoch, global_step=self.global_step, srr_per_layer=values["srr_per_layer"] or [])
        for key in ("test_loss", "test_accuracy", "train_time_s", "train_images_per_s", "loader_images_per_s",
                    "model_images_per_s"):
            values[key] = float("nan") if values[key] is None else values[key]
        return RunResult(run_dir=self.run_dir.root, config=self.config, model=self.model, metrics=list(self.rows),
                         plots=[Path(p) for p in summary.get("plots", [])], already_complete=True, **values)

    def _header(self) -> None:
        """One line before the first epoch: what trains on what, where, and how much of it."""
        if self.console is None:
            return
        config, data, env = self.config, self.data, self.env
        parameters = sum(p.numel() for p in self.model.parameters())
        c = self.model.config
        tokens = c.num_patches + 1  # the patches and CLS
        sizes = f"{len(data.train):,} train / {len(data.val) if data.val is not None else 0:,} val / " \
                f"{len(data.test):,} test images"
        batch = config.batch_size * env.world_size
        device = f"{env.device}" + (f" × {env.world_size} processes" if env.world_size > 1 else "")
        self.console.print(
            f"srr train: {config.model} ({c.variant}, {parameters:,} parameters) on {config.dataset} "
            f"({sizes}, {c.image_size}×{c.image_size}, {tokens} tokens per image), {device}, effective batch "
            f"{batch * self.grad_accum} ({self.steps_per_epoch} steps per epoch, {config.epochs} "
            f"epoch{'s' if config.epochs != 1 else ''})",
            highlight=False)

    def _evaluate(self, model: nn.Module, dataset) -> dict:
        """Loss and accuracy of ``model`` on ``dataset``, each rank scoring its shard (a collective)."""
        return evaluate(model, dataset, device=self.env.device, batch_size=EVAL_BATCH, amp=self.config.amp,
                        num_workers=self.config.num_workers, rank=self.env.rank, world_size=self.env.world_size)

    # ----- the end ----------------------------------------------------------------------------
    def _finish_plots(self) -> list[Path]:
        if not self.env.is_main or not self.rows:
            return []
        self.run_dir.plots.mkdir(parents=True, exist_ok=True)
        plots = [plot_curves(self.rows, self.run_dir.plots / "curves.png", steps=self.step_losses)]
        for callback in self.callbacks:
            plots += callback.on_plots(self, self.rows)
        return plots

    def _finish(self) -> RunResult:
        env, config = self.env, self.config
        summary = None
        if self.fsdp is not None:  # collective; a no-op unless nothing ran since a restore
            self.fsdp.gather(self.global_step)
        test = self._evaluate(self.eval_model, self.data.test)
        test_ema = self._evaluate(self.ema.module, self.data.test) if self.ema is not None else {}
        if env.is_main:
            rows = self.rows
            total_time = sum(r.get("epoch_time_s", 0.0) for r in rows)
            mean = lambda key: sum(r[key] for r in rows) / len(rows) if rows else float("nan")  # noqa: E731
            result = RunResult(
                run_dir=self.run_dir.root, config=config, model=self.eval_model, epochs=self.epoch,
                global_step=self.global_step, test_loss=test["loss"], test_accuracy=test["accuracy"],
                best_val_accuracy=self.best_val, best_epoch=self.best_epoch,
                srr_per_layer=list(rows[-1].get("srr_per_layer", [])) if rows else [],
                train_time_s=total_time,
                train_images_per_s=sum(r["train_images_per_s"] * r["epoch_time_s"] for r in rows)
                / max(total_time, 1e-9),
                loader_images_per_s=mean("loader_images_per_s"), model_images_per_s=mean("model_images_per_s"),
                metrics=list(rows), plots=self._finish_plots(),
                test_loss_ema=test_ema.get("loss"), test_accuracy_ema=test_ema.get("accuracy"),
            )
            summary = result.summary()
            self.run_dir.write_summary(summary)
            for callback in self.callbacks:
                callback.on_train_end(self, result)
        summary = D.broadcast_object(env, summary)
        if env.is_main:
            return result
        keep = {f.name for f in fields(RunResult)} - {"run_dir", "config", "model", "metrics", "plots"}
        return RunResult(run_dir=self.run_dir.root, config=config, model=self.eval_model,
                         **{k: v for k, v in summary.items() if k in keep})
