"""What ``--resume`` may change: the one rule, used by ``srr train`` and by :func:`srr.train.train`.

A resumed run trains under the options it started with, so that it ends with the weights the
uninterrupted run would have had. Two sets of fields are exempt:

- ``RUN_CONTROL``: where and how fast the run executes, not its arithmetic; each call sets its own.
  (A different thread count may change float rounding: exact resume wants the same one.)
- ``RESUMABLE``: changes that are applied and recorded in ``config.json``: more epochs (the cosine
  schedule stretches to the new end from the step reached), another checkpoint or logging interval.

Any other field that differs is refused, naming the option and both values.
"""
from __future__ import annotations

from .checkpoint import load_training_checkpoint
from .config import TrainConfig, option_name

RUN_CONTROL = frozenset({"out", "resume", "device", "num_workers", "compile", "threads"})
RESUMABLE = frozenset({"epochs", "checkpoint_every", "logger", "log_every"})


def _options(fields) -> str:
    return ", ".join(option_name(f) for f in sorted(fields))


def resume_rule() -> str:
    """The rule as one sentence (the refusal message ends with it; docs/cli.md holds it verbatim)."""
    control = sorted(RUN_CONTROL - {"out", "resume"})
    return (f"{_options(RESUMABLE)} may change (applied and recorded in config.json); "
            f"{_options(control)} are this call's own; any other option must keep the run's value")


def refused_changes(saved: dict, config: TrainConfig) -> list[str]:
    """Fields of ``config`` that differ from the ``saved`` run config and may not change (sorted)."""
    return sorted(k for k, v in config.to_dict().items()
                  if k not in RUN_CONTROL | RESUMABLE and k in saved and saved[k] != v)


def resumable_changes(saved: dict, config: TrainConfig) -> list[str]:
    """Fields of ``RESUMABLE`` that ``config`` changes against the ``saved`` run config (sorted)."""
    return sorted(k for k in RESUMABLE if k in saved and saved[k] != getattr(config, k))


def check_resume(saved: dict, config: TrainConfig) -> None:
    """Raise a ValueError naming every option of ``config`` that a resumed run may not change."""
    refused = refused_changes(saved, config)
    if refused:
        details = ", ".join(f"{option_name(k)} (run has {saved[k]!r}, given {getattr(config, k)!r})" for k in refused)
        raise ValueError(f"--resume continues a run with its own settings; cannot change {details}; "
                         f"{resume_rule()} (start a new run with another --out, or --init-from this one)")


def resumed_config(saved: TrainConfig, call: TrainConfig, given: set[str] | frozenset[str]) -> TrainConfig:
    """The config a resumed run trains under: ``saved``, with ``call``'s run control and those fields in
    ``given`` (the ones the user set) that change; a given field that may not change is refused."""
    control = {f: getattr(call, f) for f in RUN_CONTROL}
    changes = {f: getattr(call, f) for f in given if f not in RUN_CONTROL and getattr(call, f) != getattr(saved, f)}
    config = saved.replace(**control, **changes)
    check_resume(saved.to_dict(), config)
    return config.replace(resume=True)


def checkpoint_to_resume(run, config: TrainConfig, *, first_checkpoint: str) -> dict | None:
    """The checkpoint ``config.resume`` continues from the run folder ``run`` (a :class:`RunDir`), checked
    against the rule above; None for a new run. A new run refuses a folder that holds one; ``--resume``
    refuses a folder without a checkpoint, saying the run never reached ``first_checkpoint`` (what writes
    the first one: "finished an epoch", "reached its first evaluation")."""
    if config.resume:
        if not run.root.is_dir():
            raise FileNotFoundError(f"--resume needs an existing run folder, but {run.root} does not exist; "
                                    f"pass the --out of the run to continue")
        if not run.latest.is_file():
            raise FileNotFoundError(f"--resume found no checkpoint at {run.latest}; the run in {run.root} "
                                    f"never {first_checkpoint} (start it again without --resume)")
        checkpoint = load_training_checkpoint(run.latest)
        check_resume(checkpoint["extra"].get("train_config", {}), config)
        return checkpoint
    if run.latest.exists():
        raise ValueError(f"run folder {run.root} already holds a run; pass --resume to continue it, "
                         f"or choose another --out")
    return None
