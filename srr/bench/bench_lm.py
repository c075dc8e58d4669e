"""Language models on Tiny Shakespeare in nanoGPT's CPU configuration (issue 23; MATH.md §8 anchors).

4 layers, 4 heads, width 128, context 64, batch 12, 2000 iterations, AdamW lr 1e-3 (β₂ 0.99, weight decay
0.1, gradient clip 1, warm-up 100) with cosine decay to 1e-4 at 2000, no dropout — nanoGPT's
``config/train_shakespeare_char.py`` with its README's CPU overrides — for ``crate_lm``, ``crate_lm_exact``,
``tost_lm`` and the plain GPT (``gpt_lm``, the baseline), one process each, the same seed (the same training
blocks, srr.data.random_blocks) and the same evaluation blocks. Each model is one ``srr train`` run
(srr/train/lm_loop.py) in ``OUT_DIR/<model>``: a finished run is read back, an interrupted one resumed (exactly:
the run folder's checkpoint, every ``--eval-every`` steps), so the benchmark can be stopped and continued.

Reported per model: the validation loss at the last step (nats per character, on ``--eval-iters`` batches of
12 blocks: nanoGPT's ``estimate_loss``; its README reports 1.88 for its GPT here, with ``eval_iters=20``), the
best one, training tokens/s (optimiser steps alone: no evaluation or checkpoints) within its run and, fairer on a
shared machine, in alternating rounds after the runs (:func:`interleaved_throughput`; the goal reads this
one), parameters, wall time.
Goal: ``tost_lm`` or ``crate_lm`` within 0.1 nats of the GPT, at ≥ 0.9× its tokens/s.

    python -m srr.bench.bench_lm --data-dir ../shared/data/tinyshakespeare --threads 1 \\
        --json experiments/results/language/bench_lm.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("gpt_lm_nano", "crate_lm_nano", "tost_lm_nano", "crate_lm_exact_nano")
BASELINE = "gpt_lm_nano"
NANOGPT_VAL_LOSS = 1.88  # nanoGPT README, CPU configuration
NANOGPT = dict(batch_size=12, lr=1e-3, min_lr=1e-4, weight_decay=0.1, betas="0.9,0.99", grad_clip=1.0,
               warmup_iters=100, dropout=0.0)  # and context 64 (the nano models' own), lr decay to max_iters
GOAL_LOSS_GAP, GOAL_SPEED = 0.1, 0.9


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _machine(threads: int | None) -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads or torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "load_average_at_start": os.getloadavg()}


def run_model(name: str, *, data_dir: str, out_dir: Path, max_iters: int, eval_every: int, eval_iters: int,
              threads: int | None, log=print, dataset: str = "shakespeare-char") -> dict:
    """Train (or resume, or read back) ``name``'s run in ``out_dir/name``; its numbers as a dict."""
    from srr.train import TrainConfig, train

    run = out_dir / name
    summary_path = run / "summary.json"
    config = TrainConfig(dataset=dataset, data_dir=data_dir, model=name, max_iters=max_iters,
                         eval_every=eval_every, eval_iters=eval_iters, seed=0, device="cpu", threads=threads,
                         out=str(run), resume=(run / "checkpoints" / "latest.pt").is_file(), **NANOGPT)
    start = time.perf_counter()
    if summary_path.is_file() and json.loads(summary_path.read_text()).get("global_step") == max_iters:
        log(f"{name}: finished earlier, read from {summary_path}")
        wall = None
    else:
        log(f"{name}: {'resuming' if config.resume else 'training'} in {run}")
        train(config)
        wall = time.perf_counter() - start
    summary = json.loads(summary_path.read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    out = {k: summary[k] for k in ("val_loss", "best_val_loss", "best_step", "train_loss", "tokens_per_s",
                                   "train_time_s", "parameters", "global_step")}
    started = (run / "config.json").stat().st_mtime  # written when the run started (or last resumed with changes)
    out.update(wall_s_this_call=wall, wall_s_run=summary_path.stat().st_mtime - started, run_dir=str(run),
               sample=summary.get("sample", "")[:300],
               curve=[(r["step"], r["train_loss"], r["val_loss"]) for r in rows])
    log(f"{name}: val loss {out['val_loss']:.4f} (best {out['best_val_loss']:.4f}), {out['tokens_per_s']:,.0f} "
        f"tokens/s, {out['parameters']:,} parameters")
    return out


def interleaved_throughput(models, *, steps: int = 20, rounds: int = 5, threads: int | None = None) -> dict:
    """Training tokens/s of each model, timed in alternating rounds (``steps`` optimiser steps per model per round
    after one untimed warm-up round; the median round) so that a shared machine's changing load falls on every
    model alike: the fair ratio to the baseline. Same step as the runs: AdamW as :data:`NANOGPT`, batch 12 ×
    context 64, the same blocks."""
    import statistics

    import torch
    import torch.nn.functional as F

    from srr.data import random_blocks
    from srr.models import create_model
    from srr.train import TrainConfig
    from srr.train.optim import build_optimizer

    if threads is not None:
        torch.set_num_threads(threads)
    tokens = torch.randint(65, (100_000,), generator=torch.Generator().manual_seed(0))
    built = {}
    for name in models:
        torch.manual_seed(0)
        model = create_model(name)
        config = TrainConfig(dataset="shakespeare-char", model=name, **NANOGPT)
        built[name] = (model, build_optimizer(model, config))

    def run(name: str, first: int) -> float:
        model, optimizer = built[name]
        start = time.perf_counter()
        for step in range(first, first + steps):
            x, y = random_blocks(tokens, batch_size=12, context=64, seed=0, step=step)
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        return steps * 12 * 64 / (time.perf_counter() - start)

    times = {name: [] for name in models}
    for r in range(rounds + 1):
        for name in models:
            rate = run(name, r * steps)
            if r:  # round 0 warms up
                times[name].append(rate)
    return {"steps_per_round": steps, "rounds": rounds, "tokens_per_s": {n: statistics.median(v) for n, v in
                                                                          times.items()},
            "rounds_tokens_per_s": times}


def compare(models: dict) -> dict:
    """Each model against the baseline: loss gap (nats) and tokens/s ratio, and whether the goal is met."""
    base = models.get(BASELINE)
    if base is None:
        return {}
    out = {}
    for name, m in models.items():
        gap = m["val_loss"] - base["val_loss"]
        speed = m["tokens_per_s"] / base["tokens_per_s"]  # within the runs: each under its own share of the machine
        fair = m.get("tokens_per_s_interleaved")  # alternating rounds: the ratio the goal reads when measured
        if fair is not None and base.get("tokens_per_s_interleaved"):
            speed_fair = fair / base["tokens_per_s_interleaved"]
        else:
            speed_fair = None
        judged = speed if speed_fair is None else speed_fair
        out[name] = {"val_loss_gap": gap, "tokens_per_s_ratio": judged, "tokens_per_s_ratio_in_runs": speed,
                     "tokens_per_s_ratio_interleaved": speed_fair,
                     "goal_met": gap <= GOAL_LOSS_GAP and judged >= GOAL_SPEED}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="../shared/data/tinyshakespeare")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="one run folder per model; default runs/bench_lm (--quick: a temporary folder)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--max-iters", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--eval-iters", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="20 iterations, 2 evaluation batches (a smoke run)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--speed-rounds", type=int, default=5,
                        help="rounds of the interleaved tokens/s measurement after the runs (0: skip)")
    parser.add_argument("--speed-steps", type=int, default=20, help="optimiser steps per model per round")
    parser.add_argument("--speed-only", type=Path, default=None, metavar="JSON",
                        help="only the interleaved tokens/s of --models, written to JSON (no training)")
    parser.add_argument("--speed-from", type=Path, default=None, metavar="JSON",
                        help="take the interleaved tokens/s from a --speed-only file instead of measuring them")
    args = parser.parse_args(argv)
    if args.quick:
        args.speed_rounds, args.speed_steps = min(args.speed_rounds, 1), min(args.speed_steps, 2)
    if args.speed_only is not None:
        speed = interleaved_throughput(args.models.split(","), steps=args.speed_steps, rounds=args.speed_rounds,
                                       threads=args.threads)
        speed.update(command=" ".join([Path(sys.executable).name, "-m", "srr.bench.bench_lm", *(argv or sys.argv[1:])]),
                     commit=_commit(), machine=_machine(args.threads))
        args.speed_only.parent.mkdir(parents=True, exist_ok=True)
        args.speed_only.write_text(json.dumps(speed, indent=2) + "\n")
        print(json.dumps(speed["tokens_per_s"], indent=2))
        return speed
    temporary = None
    if args.quick:
        args.max_iters, args.eval_every, args.eval_iters = 20, 10, 2
        if args.out_dir is None:
            temporary = tempfile.TemporaryDirectory(prefix="srr-bench-lm-")
            args.out_dir = Path(temporary.name)
    args.out_dir = args.out_dir or Path("runs/bench_lm")
    dataset = "shakespeare-char"
    from srr.data.text import shakespeare_path

    if args.quick and not shakespeare_path(args.data_dir).is_file():  # a smoke run from anywhere: text of its own
        args.out_dir.mkdir(parents=True, exist_ok=True)
        args.data_dir = str(args.out_dir / "pangrams.txt")
        Path(args.data_dir).write_text("The quick brown fox jumps over the lazy dog.\nPack my box with five dozen "
                                       "liquor jugs!\n" * 200)
        dataset = "text"
    start = time.time()
    result = {"command": " ".join([Path(sys.executable).name, "-m", "srr.bench.bench_lm", *(argv or sys.argv[1:])]),
              "commit": _commit(), "machine": _machine(args.threads),
              "configuration": {"dataset": dataset, "max_iters": args.max_iters, "context": 64,
                                "eval_every": args.eval_every, "eval_iters": args.eval_iters, "seed": 0, **NANOGPT},
              "baseline": BASELINE, "nanogpt_reported_val_loss": NANOGPT_VAL_LOSS,
              "goal": f"tost_lm or crate_lm within {GOAL_LOSS_GAP} nats of {BASELINE} at >= {GOAL_SPEED}x its tokens/s",
              "models": {}}

    if args.json is not None and args.json.is_file():  # a continued benchmark: keep how it started
        earlier = json.loads(args.json.read_text())
        result["earlier_calls"] = [*earlier.get("earlier_calls", []),
                                   {k: earlier.get(k) for k in ("command", "commit", "machine", "wall_s")}]

    def save() -> None:
        result["comparison"] = compare(result["models"])
        result["wall_s"] = time.time() - start
        result["machine"]["load_average_at_end"] = os.getloadavg()
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(result, indent=2) + "\n")

    for name in args.models.split(","):
        result["models"][name] = run_model(name, data_dir=args.data_dir, out_dir=args.out_dir,
                                           max_iters=args.max_iters, eval_every=args.eval_every,
                                           eval_iters=args.eval_iters, threads=args.threads,
                                           log=lambda m: print(m, flush=True), dataset=dataset)
        save()  # after each model: a stopped benchmark keeps what it measured
    if args.speed_from is not None or args.speed_rounds:
        if args.speed_from is not None:
            speed = json.loads(args.speed_from.read_text())
            speed["file"] = str(args.speed_from)
        else:
            print("interleaved tokens/s ...", flush=True)
            speed = interleaved_throughput(list(result["models"]), steps=args.speed_steps, rounds=args.speed_rounds,
                                           threads=args.threads)
        result["throughput_interleaved"] = speed
        rounds = speed.get("rounds_tokens_per_s", {})
        for name, rate in speed["tokens_per_s"].items():
            if name in result["models"]:
                result["models"][name]["tokens_per_s_interleaved"] = rate
                if BASELINE in rounds and name in rounds:  # each round's ratio: the two timed under one load
                    result["models"][name]["tokens_per_s_round_ratios"] = [
                        a / b for a, b in zip(rounds[name], rounds[BASELINE])]
    save()
    met = [n for n in ("tost_lm_nano", "crate_lm_nano") if result["comparison"].get(n, {}).get("goal_met")]
    result["goal_met"] = bool(met)
    save()
    for name, c in result["comparison"].items():
        m = result["models"][name]
        print(f"{name:>22}: val {m['val_loss']:.4f}  gap {c['val_loss_gap']:+.4f} nats  "
              f"{m['tokens_per_s']:,.0f} tokens/s ({c['tokens_per_s_ratio']:.2f}x)  {m['parameters']:,} params")
    if temporary is not None:
        temporary.cleanup()
    return result


if __name__ == "__main__":
    main()
