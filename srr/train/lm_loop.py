"""``train_lm(config) -> LMRunResult``: the training loop of causal language models on text datasets.

What ``srr train`` runs when ``--dataset`` is a text dataset (``shakespeare-char``, ``text``, ``textfile``;
srr/data/text.py); the image loop (srr/train/loop.py) hands over to it. nanoGPT's ``train.py`` in the
components of the image runs: the same run folder (srr/train/run_dir.py: ``config.json``, ``metrics.jsonl``,
atomic ``checkpoints/latest.pt`` and ``best.pt``, plots, ``summary.json``), exact ``--resume``
(srr/train/checkpoint.py, state.py), loggers and callbacks, the progress bar, DistributedDataParallel under
``torchrun`` and the SIGTERM / Ctrl-C stop (under DDP at the next evaluation or checkpoint, where the ranks
agree on it).

- Iteration-based: ``max_iters`` optimiser steps, each on ``batch_size`` random blocks of ``context`` tokens
  per process (:func:`srr.data.random_blocks`: the blocks of step s are a function of ``(seed, s)``, the global
  batch split over the ranks); loss: the mean next-token cross-entropy in nats per token.
- AdamW etc. (``--optimizer``, ``--betas``, ``--weight-decay`` on weight matrices only), linear warm-up over
  ``warmup_iters`` steps then cosine decay to ``min_lr`` at ``max_iters`` (nanoGPT's ``get_lr``), gradient
  clipping, bfloat16 autocast, ``torch.compile``.
- Every ``eval_every`` steps and at the end: the loss on ``eval_iters`` batches of blocks of each split
  (nanoGPT's ``estimate_loss``), drawn from a fixed seed, so that every evaluation of every run scores the same
  blocks; under DDP each rank scores its share of each batch, as in training. A ``metrics.jsonl`` row,
  ``latest.pt``, and ``best.pt`` on a new best validation loss. ``summary.json``: ``val_loss`` (nats per
  token: per character for ``shakespeare-char``), ``best_val_loss``, tokens/s, parameters; ``sample.txt``:
  a continuation sampled from a newline.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from srr.data import TextCorpus, Vocabulary, load_text_dataset, random_blocks
from srr.models import create_model

from . import distributed as D
from .callbacks import Callback, build_logger
from .checkpoint import copy_atomic, save_training_checkpoint
from .config import TrainConfig
from .errors import NonFiniteLossError, TrainingInterrupted
from .evaluate import autocast
from .guards import StopRequest, cpu_threads, deterministic_algorithms, stop_on_signals
from .optim import build_optimizer
from .plots import _pyplot
from .report import Reporter
from .resume import checkpoint_to_resume, resumable_changes
from .run_dir import RunDir, atomic_write_text, default_run_name
from .schedule import WarmupCosine
from .state import capture_rng, restore_rank_rng, seed_everything

EVAL_SEED = 0  # the evaluation blocks: the same for every run, whatever its --seed
SAMPLE_TOKENS = 200  # length of sample.txt


@dataclass
class LMRunResult:
    """What a finished language-model run reports (every rank gets the same numbers)."""

    run_dir: Path
    config: TrainConfig
    model: nn.Module  # the trained model, unwrapped (no DDP / compile)
    global_step: int
    val_loss: float  # nats per token on the validation blocks, at the last step
    train_loss: float  # the same on training blocks
    best_val_loss: float | None
    best_step: int | None
    train_time_s: float  # optimiser steps alone (no evaluation, no checkpoints)
    tokens_per_s: float  # training tokens per second, all ranks
    parameters: int
    vocab_size: int
    metrics: list[dict] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    sample: str | None = None
    already_complete: bool = False

    def summary(self) -> dict:
        skip = {"model", "metrics", "config", "already_complete"}
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}
        out["run_dir"] = str(self.run_dir)
        out["plots"] = [str(p) for p in self.plots]
        out["dataset"], out["model"], out["loss_unit"] = self.config.dataset, self.config.model, "nats per token"
        return out


def train_lm(config: TrainConfig, *, console: Console | None = None, callbacks: Sequence[Callback] = (),
             defaults: bool = True) -> LMRunResult:
    """Train the language model ``config.model`` on the text dataset ``config.dataset``; ``callbacks`` run on rank 0
    after the logger of ``config.logger`` (``defaults=False``: ``callbacks`` alone). ``on_epoch_end`` and
    ``on_epoch_metrics`` get each evaluation's row. Raises as :func:`srr.train.train` does."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    env = D.setup(config.device)
    try:
        with deterministic_algorithms(config.deterministic), cpu_threads(config.threads):
            trainer = _LMTrainer(config, env, console, callbacks, defaults=defaults)
            with stop_on_signals() as stop:
                trainer.stop = stop
                return trainer.run()
    finally:
        D.teardown(env)


class _StepReporter(Reporter):
    """The progress bar over optimiser steps (a language-model run has no epochs)."""

    def __init__(self, console: Console | None, *, total_steps: int, done_steps: int) -> None:
        super().__init__(None, total_steps=total_steps, done_steps=done_steps, epochs=1)
        self.console = console
        if console is not None:
            self.progress = Progress(TextColumn("[bold]step"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(),
                                     TimeRemainingColumn(), console=console, transient=False)
            self.task = self.progress.add_task("train", total=total_steps, completed=done_steps, epoch=1, epochs=1,
                                               loss="-")


class _LMTrainer:
    def __init__(self, config: TrainConfig, env: D.DistEnv, console: Console | None,
                 callbacks: Sequence[Callback] = (), *, defaults: bool = True) -> None:
        self.config, self.env = config, env
        self.stop = StopRequest()
        self.console = console if env.is_main else None
        root = config.out or str(Path("runs") / default_run_name(config.model, config.dataset))
        self.run_dir = RunDir(Path(D.broadcast_object(env, root)))
        self.checkpoint = checkpoint_to_resume(self.run_dir, config,
                                               first_checkpoint="reached its first evaluation")

        seed_everything(config.seed)  # identical initial weights on every rank
        self.data: TextCorpus = load_text_dataset(config.dataset, data_dir=config.data_dir, download=config.download)
        overrides = {k: v for k, v in config.model_overrides().items() if v is not None}
        self.model = create_model(config.model, vocab_size=self.data.vocab_size, **overrides).to(env.device)
        self.context = config.context or self.model.config.context
        if self.context > self.model.config.context:
            raise ValueError(f"--context {self.context} exceeds the context of {config.model} "
                             f"({self.model.config.context}); pass at most that")
        self.tokens_per_step = config.batch_size * self.context * env.world_size
        self.optimizer = build_optimizer(self.model, config)
        self.scheduler = WarmupCosine(self.optimizer, total_steps=config.max_iters,
                                      warmup_steps=min(config.warmup_iters, config.max_iters),
                                      min_lr=min(config.min_lr, config.lr))
        self.forward_model: nn.Module = self.model
        self.ddp = None
        if env.distributed:
            from torch.nn.parallel import DistributedDataParallel

            device_ids = [env.device] if env.device.type == "cuda" else None
            self.ddp = self.forward_model = DistributedDataParallel(self.model, device_ids=device_ids)
        if config.compile:
            self.forward_model = torch.compile(self.forward_model)

        self.global_step, self.train_s = 0, 0.0
        self.best_val, self.best_step = None, None
        self.rows: list[dict] = []
        self.step_losses: list[tuple[int, float]] = []  # (step, loss) every log_every steps of this process
        self.running = torch.zeros(2, dtype=torch.float64, device=env.device)  # Σ loss, steps since the last row
        if self.checkpoint is not None:
            self._restore(self.checkpoint)
        else:
            seed_everything(config.seed + env.rank)  # rank-offset draws (dropout)
            if env.is_main:
                self.run_dir.create()
                self.run_dir.write_config({**config.to_dict(), "resolved": self._resolved()})
                self.run_dir.metrics.unlink(missing_ok=True)
                atomic_write_text(self.run_dir.root / "vocab.json", json.dumps(self.data.vocabulary.to_dict()) + "\n")
        self.callbacks: list[Callback] = []
        if env.is_main:
            logger = [build_logger(config.logger, self.run_dir.root, every=config.log_every)] if (
                defaults and config.logger is not None) else []
            self.callbacks = [*logger, *callbacks]
        D.barrier(env)

    # ----- run folder and resume ------------------------------------------------------------
    def _resolved(self) -> dict:
        import platform

        device = self.env.device
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or device.type
        return {"model": self.model.config.to_dict(), "device": str(device), "device_name": name,
                "world_size": self.env.world_size, "out": str(self.run_dir.root.resolve()), "context": self.context,
                "tokens_per_step": self.tokens_per_step, "parameters": self.parameters,
                "data": {"source": self.data.source, "train_tokens": len(self.data.train),
                         "val_tokens": len(self.data.val), "vocab_size": self.data.vocab_size},
                "versions": {"torch": torch.__version__, "python": platform.python_version()}}

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def eval_model(self) -> nn.Module:
        return self.model

    def _restore(self, checkpoint: dict) -> None:
        extra = checkpoint["extra"]
        self.model.load_state_dict(checkpoint["state_dict"])
        self.optimizer.load_state_dict(extra["optimizer"])
        self.scheduler.load_state_dict(extra["scheduler"])
        if resumable_changes(extra.get("train_config", {}), self.config) and self.env.is_main:
            self.run_dir.write_config({**self.config.to_dict(), "resolved": self._resolved()})
        progress = extra["progress"]
        self.global_step, self.train_s = int(progress["global_step"]), float(progress["train_s"])
        self.best_val, self.best_step = progress.get("best_val_loss"), progress.get("best_step")
        self.running = torch.tensor(progress["running"], dtype=torch.float64, device=self.env.device)
        restore_rank_rng(extra["rng"], rank=self.env.rank, world_size=self.env.world_size, seed=self.config.seed,
                         step=self.global_step)
        if self.env.is_main:
            self.rows = [r for r in self.run_dir.read_metrics() if r.get("step", 0) <= self.global_step]
            atomic_write_text(self.run_dir.metrics, "".join(json.dumps(r) + "\n" for r in self.rows))

    def _save(self, *, best: bool = False) -> None:
        """``latest.pt`` (and ``best.pt``); collective under DDP (it gathers every rank's RNG)."""
        rng = D.gather_objects(self.env, capture_rng())
        if self.env.is_main:
            progress = {"global_step": self.global_step, "train_s": self.train_s, "best_val_loss": self.best_val,
                        "best_step": self.best_step, "world_size": self.env.world_size,
                        "running": self.running.tolist()}
            save_training_checkpoint(self.run_dir.latest, model=self.model, optimizer=self.optimizer,
                                     scheduler=self.scheduler, progress=progress, rng=rng,
                                     train_config=self.config.to_dict())
            if best:
                copy_atomic(self.run_dir.latest, self.run_dir.best)
        D.barrier(self.env)

    # ----- training -------------------------------------------------------------------------
    def run(self) -> LMRunResult:
        config = self.config
        if self.checkpoint is not None and self.global_step >= config.max_iters:
            return self._complete()
        self._header()
        reporter = _StepReporter(self.console, total_steps=config.max_iters, done_steps=self.global_step)
        if self.checkpoint is not None:
            reporter.log(f"resuming {self.run_dir.root} at step {self.global_step}")
        for callback in self.callbacks:
            callback.on_train_start(self)
        with reporter:
            while self.global_step < config.max_iters:
                self._step(reporter)
                evaluate = self.global_step % config.eval_every == 0 or self.global_step == config.max_iters
                saved = evaluate or bool(config.checkpoint_every and self.global_step % config.checkpoint_every == 0)
                if evaluate:
                    self._evaluate_and_save(reporter)
                elif saved:
                    self._save()
                if self._stop_requested(boundary=saved):
                    if not saved:
                        self._save()
                    raise TrainingInterrupted(signal_name=self.stop.signal_name or "a signal on another rank",
                                              step=self.global_step, epoch=1, checkpoint=self.run_dir.latest,
                                              run_dir=self.run_dir.root)
            reporter.step(epoch=1, completed=self.global_step)
        return self._finish()

    def _stop_requested(self, *, boundary: bool) -> bool:
        """A SIGTERM / Ctrl-C: honoured after the step in a single process; under DDP at the next evaluation or
        checkpoint, where the ranks agree on it (one small all-reduce), since saving is a collective."""
        if not self.env.distributed:
            return bool(self.stop)
        if not boundary:
            return False
        flag = torch.tensor([float(bool(self.stop))], device=self.env.device)
        return bool(D.all_reduce_sum(self.env, flag)[0] > 0)

    def _step(self, reporter: _StepReporter) -> None:
        config, env = self.config, self.env
        self.forward_model.train()
        start = time.perf_counter()
        x, y = random_blocks(self.data.train, batch_size=config.batch_size, context=self.context, seed=config.seed,
                             step=self.global_step, rank=env.rank, world_size=env.world_size)
        x, y = x.to(env.device, non_blocking=True), y.to(env.device, non_blocking=True)  # (B, T) each
        with autocast(env.device, config.amp):
            logits = self.forward_model(x)  # (B, T, vocab)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                   config.grad_clip if config.grad_clip is not None else math.inf)
        self.optimizer.step()
        self.scheduler.step()
        self.global_step += 1
        self.running += torch.stack([loss.detach().double(), torch.ones((), dtype=torch.float64, device=env.device)])
        if self.global_step % config.log_every == 0:  # the only host sync of a step, every log_every steps
            value = loss.item()
            self._check_finite(value, grad_norm.item())
            reporter.step(epoch=1, loss=value, completed=self.global_step)
            self.step_losses.append((self.global_step, value))
            scalars = {"step": self.global_step, "loss": value, "lr": self.scheduler.get_last_lr()[0],
                       "grad_norm": grad_norm.item(),
                       "tokens_per_s": self.tokens_per_step / max(time.perf_counter() - start, 1e-9)}
            for callback in self.callbacks:
                callback.on_step_end(self, scalars)
        self.train_s += time.perf_counter() - start

    def _check_finite(self, loss: float, grad_norm: float) -> None:
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            what, value = ("the loss", loss) if not math.isfinite(loss) else ("the gradient norm", grad_norm)
            raise NonFiniteLossError(what=what, value=value, step=self.global_step, epoch=1,
                                     checkpoint=self.run_dir.latest if self.run_dir.latest.exists() else None)

    @torch.no_grad()
    def estimate_loss(self, model: nn.Module) -> dict[str, float]:
        """Mean cross-entropy on ``eval_iters`` fixed batches of blocks of each split (a collective under DDP)."""
        config, env = self.config, self.env
        was_training = model.training
        model.eval()
        out = {}
        for stream, split in enumerate(("train", "val"), start=1):
            sums = torch.zeros(2, dtype=torch.float64, device=env.device)
            for i in range(config.eval_iters):  # batch i: the global batch of all ranks, as in training
                x, y = random_blocks(self.data.split(split), batch_size=config.batch_size, context=self.context,
                                     seed=EVAL_SEED, step=i, stream=stream, rank=env.rank, world_size=env.world_size)
                with autocast(env.device, config.amp):
                    logits = model(x.to(env.device))  # (B, T, vocab)
                sums[0] += F.cross_entropy(logits.float().flatten(0, 1), y.to(env.device).flatten()).double()
                sums[1] += 1
            sums = D.all_reduce_sum(env, sums)
            out[split] = float(sums[0] / sums[1])
        model.train(was_training)
        return out

    def _evaluate_and_save(self, reporter: _StepReporter) -> None:
        env = self.env
        running = D.all_reduce_sum(env, self.running.clone()).tolist()
        self.running.zero_()
        estimate = self.estimate_loss(self.model)
        self._check_finite(estimate["train"], 0.0)
        row = {"step": self.global_step, "train_loss": estimate["train"], "val_loss": estimate["val"],
               "train_loss_running": running[0] / max(running[1], 1), "lr": self.scheduler.get_last_lr()[0],
               "tokens_per_s": self.global_step * self.tokens_per_step / max(self.train_s, 1e-9),
               "train_time_s": self.train_s, "world_size": env.world_size, "time": time.time()}
        improved = self.best_val is None or estimate["val"] < self.best_val
        if improved:
            self.best_val, self.best_step = estimate["val"], self.global_step
        if env.is_main:
            for callback in self.callbacks:
                callback.on_epoch_metrics(self, row)
            self.run_dir.append_metrics(row)
            self.rows.append(row)
            reporter.log(f"step {row['step']:>6}/{self.config.max_iters}  train loss {row['train_loss']:.4f}  "
                         f"val loss {row['val_loss']:.4f}  lr {row['lr']:.2e}  {row['tokens_per_s']:,.0f} tokens/s")
            for callback in self.callbacks:
                callback.on_epoch_end(self, row)
        self._save(best=improved)

    # ----- the end ----------------------------------------------------------------------------
    def _header(self) -> None:
        if self.console is None:
            return
        config, data, env = self.config, self.data, self.env
        device = f"{env.device}" + (f" × {env.world_size} processes" if env.world_size > 1 else "")
        self.console.print(
            f"srr train: {config.model} ({self.model.config.variant}, {self.parameters:,} parameters) on "
            f"{config.dataset} ({len(data.train):,} train / {len(data.val):,} val tokens, vocabulary "
            f"{data.vocab_size}), {device}, {config.batch_size * env.world_size} blocks of {self.context} tokens "
            f"per step, {config.max_iters} steps", highlight=False)

    def sample(self, *, tokens: int = SAMPLE_TOKENS, seed: int | None = None) -> str:
        """A continuation of a newline (of the first token, without one in the vocabulary), sampled at temperature 1."""
        vocabulary: Vocabulary = self.data.vocabulary
        start = vocabulary.encode("\n") if vocabulary.chars is None or "\n" in vocabulary.chars else torch.zeros(1)
        g = torch.Generator(device=self.env.device).manual_seed(self.config.seed if seed is None else seed)
        idx = start.long().view(1, -1).to(self.env.device)
        return vocabulary.decode(self.model.generate(idx, tokens, generator=g)[0, idx.shape[1]:].cpu())

    def _plot(self) -> list[Path]:
        if not self.rows:
            return []
        plt = _pyplot()
        self.run_dir.plots.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(6.5, 4))
        if self.step_losses:
            ax.plot(*zip(*self.step_losses), lw=0.8, alpha=0.6, color="tab:gray", label="train, per step")
        steps = [r["step"] for r in self.rows]
        for split in ("train", "val"):
            ax.plot(steps, [r[f"{split}_loss"] for r in self.rows], marker="o", label=f"{split} (estimate)")
        ax.set(xlabel="optimiser step", ylabel="cross-entropy (nats per token)",
               title=f"{self.config.model} on {self.config.dataset}")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        path = self.run_dir.plots / "curves.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        plots = [path]
        for callback in self.callbacks:
            plots += callback.on_plots(self, self.rows)
        return plots

    def _result(self, **values) -> LMRunResult:
        last = self.rows[-1] if self.rows else {}
        return LMRunResult(
            run_dir=self.run_dir.root, config=self.config, model=self.model, global_step=self.global_step,
            val_loss=last.get("val_loss", math.nan), train_loss=last.get("train_loss", math.nan),
            best_val_loss=self.best_val, best_step=self.best_step, train_time_s=self.train_s,
            tokens_per_s=self.global_step * self.tokens_per_step / max(self.train_s, 1e-9),
            parameters=self.parameters, vocab_size=self.data.vocab_size, metrics=list(self.rows), **values)

    def _finish(self) -> LMRunResult:
        summary, result = None, None
        if self.env.is_main:
            text = self.sample()
            atomic_write_text(self.run_dir.root / "sample.txt", text)
            result = self._result(plots=self._plot(), sample=text)
            summary = result.summary()
            self.run_dir.write_summary(summary)
            for callback in self.callbacks:
                callback.on_train_end(self, result)
        summary = D.broadcast_object(self.env, summary)
        if result is None:
            self.rows = [{"step": self.global_step, "val_loss": summary["val_loss"],
                          "train_loss": summary["train_loss"]}]
            result = self._result(plots=[Path(p) for p in summary["plots"]], sample=summary["sample"])
        return result

    def _complete(self) -> LMRunResult:
        """A resumed run that has trained all its steps: say so and change nothing."""
        if self.console is not None:
            self.console.print(f"the run in {self.run_dir.root} is complete (step {self.global_step} of "
                               f"{self.config.max_iters}); nothing to do",
                               highlight=False)
        summary = {}
        if self.env.is_main and self.run_dir.summary.is_file():
            summary = json.loads(self.run_dir.summary.read_text())
        summary = D.broadcast_object(self.env, summary)
        result = self._result(plots=[Path(p) for p in summary.get("plots", [])], sample=summary.get("sample"),
                              already_complete=True)
        return result
