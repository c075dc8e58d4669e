"""Experiment — the SRR regulariser at the CPU recipe's scale, and the literal ToST step (issue 22 §3, §4).

**§3, the regulariser where the measure predicts** (MATH.md §6). ``crate_micro`` (d 128, 6 layers, 4 heads of
32, patch 4: 65 tokens) on the full CIFAR-10 (JPEG) training set with the CPU recipe's schedule (``srr train``'s
defaults: AdamW 3e-3, 2 warm-up epochs, cosine, batch 64, weight decay 0.05, label smoothing 0.1, crop + flip)
for ``--epochs`` 10, ``--seeds`` 0 1 2 paired (one seed: the same initial weights, batch order and augmentation
in every arm). Arms (``--arms``):

- ``ce``: cross-entropy alone (``srr_weight`` 0);
- ``hu24``: HU24's form, the last layer's μ_SRR on its detached input, ε = 0.1, η = 1e-3 (the recipe's default);
- ``eps1``: the same at ε = 1, with η chosen so that ‖∇ η·μ_SRR‖ / ‖∇ CE‖ over the last layer's parameters
  equals the ``hu24`` arm's at initialisation: η₁ = 1e-3 · r(0.1) / r(1), r(ε) the ratio per unit η on seed 0's
  initial weights (``calibration.json``).

Every run is measured after every epoch (and at initialisation) on its probe images (the run's
``measure_samples`` training images) in both conventions (``experiments/_cifar.py``: raw tokens, R and R^c at
ε = 0.1, ε² = p/N, ε = 1 and ‖Z‖₀; YU23's R^c at the MSSA input), with the gradient ratio per unit η at ε = 0.1
and ε = 1 (``runs/<run>/epochs.jsonl`` → ``epochs/<run>.csv``).

**§4, the literal ToST step** (``--tost-tied``; MATH.md §7, E13): the recipe with ``--variant tost`` (as
``experiments/results/cifar_recipe_tost``), its TSSA output tied to U: ``srr.layers.TSSA(output="tied")``, the
update ``−κβ o W`` with κβ = 1 (κ = N ε²/p = N at ToST's p/ε² = 1), i.e. ToST's ``to_out`` replaced by the qkv
weight W (U_k = W_kᵀ): the gradient step −∇R^c_var scaled by 1/β. At the end: does each TSSA half-step lower its
own R^c_var (Π held fixed) — on the raw tokens Z^ℓ → Z^{ℓ+½} as the untied run's page, and at the step's own
input LN₁(Z^ℓ) → LN₁(Z^ℓ) + C(LN₁(Z^ℓ)).

Each run is ``srr.train.train`` in its own run folder ``runs/<run>/`` (checkpoints every ``--checkpoint-every``
steps): a killed run resumes from its latest checkpoint (``resume=True``), a finished one (``rows/<run>.json``)
is skipped, so the harness spans sessions: run the same command again.

Run: ``python -m experiments.regularization_recipe [--threads 1] [--arms ce hu24 eps1] [--seeds 0 1 2]`` or
``--quick``; ``--tost-tied`` for §4; ``--device cuda``; ``--workers N`` runs N runs at once (processes).
Writes ``runs.csv``, ``table.csv``/``table.md``, ``calibration.json``, ``epochs/*.csv``, ``summary.json``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from experiments._common import RESULTS, markdown_table, mean_std, parse_args, summary, write_csv, write_json
from experiments._pool import run_jobs
from srr.train import Callback

NAME = "regularization_recipe"
ARMS = ("ce", "hu24", "eps1")
HU24_ETA, HU24_EPS, EPS1 = 1e-3, 0.1, 1.0
RATIO_EPS = (0.1, 1.0)
TIED = "_tost_tied"  # suffix of the registered tied models: crate_micro_tost_tied (crate_nano_tost_tied: --quick)
ROWS_DIR, RUNS_DIR, EPOCHS_DIR = "rows", "runs", "epochs"


# ----- the tied ToST model -----------------------------------------------------------------------------------
def register_tost_tied(base: str = "crate_micro") -> str:
    """Register ``<base>_tost_tied``: ``base`` with ``variant="tost"`` whose every TSSA has its output tied to U
    (``TSSA(output="tied")``, κ = N ε²/p so that κβ = 1 and the update is ``−o W``). Idempotent; returns the name."""
    from srr.models import create_model, list_models, register_model

    name = base + TIED
    if name in list_models():
        return name

    def tost_tied(**kwargs):
        from srr.layers import TSSA

        kwargs["variant"] = "tost"
        net = create_model(base, **kwargs)
        N = net.config.num_patches + 1
        for block in net.blocks():
            old = block.compression
            block[0].fn = TSSA(old.dim, heads=old.heads, head_dim=old.head_dim, output="tied", eps=old.eps,
                               step_size=float(N) * old.eps**2 / old.head_dim, backend=old.backend)
        return net

    register_model(tost_tied, name=name)
    return name


def _registered(model: str) -> str:
    if model.endswith(TIED):
        register_tost_tied(model[: -len(TIED)])
    return model


# ----- runs --------------------------------------------------------------------------------------------------
def run_key(job: dict) -> str:
    return f"s{job['seed']}-{job['arm']}"


def train_config(job: dict, *, resume: bool = False):
    from srr.train import TrainConfig

    return TrainConfig(
        model=job["model"], variant=job.get("variant"), dataset="cifar10", data_dir=job["data_dir"],
        epochs=job["epochs"], seed=job["seed"], srr_weight=job["eta"], srr_eps=job["srr_eps"],
        measure_samples=job["measure_samples"], train_subset=job.get("train_subset"), out=job["run_dir"],
        resume=resume, device=job["device"], threads=job["threads"], checkpoint_every=job["checkpoint_every"],
        **job.get("overrides", {}))


def last_layer_ratios(model, images, labels, *, label_smoothing: float, batch_size: int = 128,
                      eps_values=RATIO_EPS) -> dict[str, float]:
    """‖∇ μ_SRR(ε)‖ / ‖∇ CE‖ per unit η over the last layer's parameters, gradients summed over the batches of
    ``images``. μ_SRR as HU24's regulariser takes it (``SRRRegularizer(layers=-1, detach_input=True)``, the
    layer's own heads, λ = 0.1): the last layer applied to its detached input, so its gradient reaches that
    layer's parameters only. Computed without hooks (a run's own regulariser may be attached)."""
    import torch
    import torch.nn.functional as F

    from srr.measurement.terms import mean_terms, sample_terms

    block = model.blocks()[-1]
    params = list(block.parameters())
    was = model.training
    model.train()
    sums = {k: [torch.zeros_like(p) for p in params] for k in ("ce", *eps_values)}
    try:
        for xb, yb in zip(images.split(batch_size), labels.split(batch_size)):
            logits, layers = model.forward_layer_tokens(xb)
            values = {"ce": F.cross_entropy(logits.float(), yb, label_smoothing=label_smoothing)}
            out = block.tokens(layers[-1].input.detach()).output
            for e in eps_values:
                values[e] = mean_terms(sample_terms(out, block.subspaces, eps=e, lam=0.1)).srr
            for key, value in values.items():
                grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
                for acc, g in zip(sums[key], grads):
                    if g is not None:
                        acc += g
    finally:
        model.train(was)
    norm = {k: float(torch.sqrt(sum((g.double() ** 2).sum() for g in v))) for k, v in sums.items()}
    return {f"ratio_per_eta[{e:g}]": norm[e] / norm["ce"] for e in eps_values}


def _probe(trainer):
    """The run's probe images (its first ``measure_samples`` training images, no augmentation) with labels."""
    ds = trainer.data.train  # Subset of the (augmenting) in-memory training set
    images, labels = ds.dataset.tensors
    idx = list(ds.indices)[: trainer.config.measure_samples]
    device = trainer.env.device
    return images[idx].to(device), labels[idx].to(device)


def _measure(net, images) -> dict:
    """Both conventions on ``images``: per layer raw R, R^c, ‖Z‖₀, YU23's R^c (and R^c_var for TSSA)."""
    from experiments._cifar import layer_stats

    rows = layer_stats(net, images)
    out = {}
    for r in rows:
        for k, v in r.items():
            if k != "layer":
                out[f"L{r['layer']}_{k}"] = v
    for tag in ("0.1", "p/N", "1"):
        out[f"srr_mean[{tag}]"] = float(np.mean([r[f"srr[{tag}]"] for r in rows]))
        out[f"srr_last[{tag}]"] = rows[-1][f"srr[{tag}]"]
    out["Rc_yu23_mean"] = float(np.mean([r["Rc_yu23_in"] for r in rows]))
    return out


def _tssa_own_step(net, images) -> list[dict]:
    """Per TSSA layer: R^c_var (ε = 0.1, Π of LN₁(Z^ℓ) held fixed) before and after the half-step, on the raw
    tokens (Z^ℓ → Z^{ℓ+½}) and at the step's own input (LN₁(Z^ℓ) → LN₁(Z^ℓ) + C(LN₁(Z^ℓ)))."""
    import torch

    import srr

    was = net.training
    net.eval()
    rows = []
    with torch.no_grad():
        _, layers = net.forward_layer_tokens(images)
        for ell, (t, block) in enumerate(zip(layers, net.blocks())):
            comp = block.compression
            if not hasattr(comp, "membership"):
                continue
            U = block.subspaces.detach().double()
            Pi = comp.membership(t.mssa_input).double()
            x = t.mssa_input.double()
            stepped = (t.mssa_input + comp(t.mssa_input)).double()

            def rv(Z):
                return float(srr.variational_compressed_coding_rate(Z, U, Pi, 0.1).mean())

            raw_in, raw_half = rv(t.input.double()), rv(t.half.double())
            own_in, own_out = rv(x), rv(stepped)
            rows.append({"layer": ell, "Rcvar_raw_in": raw_in, "Rcvar_raw_half": raw_half,
                         "raw_lowered": raw_half < raw_in, "Rcvar_own_in": own_in, "Rcvar_own_out": own_out,
                         "own_lowered": own_out < own_in})
    net.train(was)
    return rows


class _Probe(Callback):
    """Callback: the init ratios (fresh runs), and after every epoch both conventions and the ratios."""

    def __init__(self, job: dict):
        self.job, self.run_dir = job, Path(job["run_dir"])

    def _row(self, trainer, epoch: int) -> dict:
        images, labels = _probe(trainer)
        net = trainer.eval_model
        row = {"epoch": epoch, **last_layer_ratios(net, images, labels,
                                                   label_smoothing=trainer.config.label_smoothing)}
        row.update(_measure(net, images))
        return row

    def _append(self, row: dict) -> None:
        with open(self.run_dir / "epochs.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def on_train_start(self, trainer) -> None:
        if trainer.global_step == 0:  # a fresh run: the initial weights, before any step
            row = self._row(trainer, 0)
            row["param_checksum"] = _checksum(trainer.eval_model)
            write_json(self.run_dir / "init.json", row)
            self._append(row)

    def on_epoch_end(self, trainer, row: dict) -> None:
        out = self._row(trainer, int(row["epoch"]))
        out.update({k: row.get(k) for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")
                    if k in row})
        self._append(out)


def _checksum(model) -> float:
    return float(sum(p.detach().double().sum() * (i + 1) for i, p in enumerate(model.parameters())))


def read_epochs(run_dir: Path) -> list[dict]:
    """``epochs.jsonl`` with one row per epoch (a resumed run's repeated epoch: the last row kept)."""
    path = Path(run_dir) / "epochs.jsonl"
    if not path.is_file():
        return []
    rows = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows[r["epoch"]] = r
    return [rows[e] for e in sorted(rows)]


def run_one(job: dict) -> dict:
    """Train (or resume) one run and return its row (module level: may run in a worker process)."""
    import torch

    from srr.train import train
    from srr.train.run_dir import RunDir

    _registered(job["model"])
    torch.set_num_threads(job["threads"])
    run_dir = Path(job["run_dir"])
    resume = RunDir(run_dir).latest.is_file()
    started = time.perf_counter()
    result = train(train_config(job, resume=resume), callbacks=[_Probe(job)], defaults=False)
    epochs = read_epochs(run_dir)
    init, end = epochs[0], epochs[-1]
    e = job["srr_eps"]
    key = f"ratio_per_eta[{e:g}]"
    eta = job["eta"]
    row = {"seed": job["seed"], "arm": job["arm"], "eta": eta, "srr_eps": e, "epochs": result.epochs,
           "test_accuracy": result.test_accuracy, "test_loss": result.test_loss,
           "best_val_accuracy": result.best_val_accuracy,
           "grad_ratio_init": eta * init[key], "grad_ratio_end": eta * end[key],
           **{f"init_{k}": v for k, v in init.items() if k.startswith("ratio_per_eta")},
           **{f"end_{k}": v for k, v in end.items() if k.startswith("ratio_per_eta")},
           **{f"end_{k}": end[k] for k in ("srr_mean[0.1]", "srr_mean[1]", "srr_last[0.1]", "srr_last[1]",
                                          "Rc_yu23_mean")},
           "train_time_s": result.train_time_s, "train_images_per_s": result.train_images_per_s,
           "wall_s_this_session": time.perf_counter() - started, "resumed": resume,
           "param_checksum_init": init.get("param_checksum"), "model": job["model"], "variant": job.get("variant"),
           "run_dir": str(run_dir)}
    if job["model"].endswith(TIED) or job.get("variant") == "tost":
        images, _ = _probe_from_config(job)
        steps = _tssa_own_step(result.model.eval(), images.to(next(result.model.parameters()).device))
        write_csv(run_dir.parent.parent / f"tssa_steps_{run_key(job)}.csv", steps)
        row["tssa_layers_raw_lowered"] = sum(r["raw_lowered"] for r in steps)
        row["tssa_layers_own_lowered"] = sum(r["own_lowered"] for r in steps)
        row["tssa_layers"] = len(steps)
    out = Path(job["results"])
    (out / EPOCHS_DIR).mkdir(parents=True, exist_ok=True)
    write_csv(out / EPOCHS_DIR / f"{run_key(job)}.csv", epochs)
    path = out / ROWS_DIR / f"{run_key(job)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path.with_name(path.name + ".tmp"), row)
    path.with_name(path.name + ".tmp").replace(path)  # the done marker, written last
    return row


def _probe_from_config(job: dict):
    """The probe images (and labels) a run's trainer uses, rebuilt from its config (first ``measure_samples``
    training images, no augmentation)."""
    from srr.train.data import load_run_data

    data = load_run_data(train_config(job))
    images, labels = data.train.dataset.tensors
    idx = list(data.train.indices)[: job["measure_samples"]]
    return images[idx], labels[idx]


# ----- calibration -------------------------------------------------------------------------------------------
def initial_model(job: dict):
    """The model ``srr.train.train`` starts from for ``job`` (its initial weights), and its run data: the trainer's
    own sequence (seed, data, model). ``tests/test_science2.py`` checks it against a run's first weights."""
    from srr.models import create_model
    from srr.train.data import load_run_data
    from srr.train.state import seed_everything

    _registered(job["model"])
    config = train_config(job)
    seed_everything(config.seed)
    data = load_run_data(config)
    info = data.info
    model = create_model(config.model, num_classes=info.num_classes, image_size=info.image_size,
                         in_chans=info.in_chans, **config.model_overrides())
    return model, data


def calibrate(job: dict, path: Path) -> dict:
    """η of the ε = 1 arm: the ratio per unit η at ε = 0.1 and ε = 1 on ``job``'s initial weights (seed 0),
    η₁ = 1e-3 · r(0.1) / r(1). Cached in ``path``."""
    if path.is_file():
        return json.loads(path.read_text())
    import torch

    started = time.perf_counter()
    model, data = initial_model(job)
    model.to(torch.device(job["device"] if job["device"] != "auto" else "cpu"))
    images, labels = data.train.dataset.tensors
    idx = list(data.train.indices)[: job["measure_samples"]]
    device = next(model.parameters()).device
    ratios = last_layer_ratios(model, images[idx].to(device), labels[idx].to(device), label_smoothing=0.1)
    r01, r1 = ratios[f"ratio_per_eta[{HU24_EPS:g}]"], ratios[f"ratio_per_eta[{EPS1:g}]"]
    payload = {"seed": job["seed"], "images": len(idx), "ratio_per_eta_eps0.1": r01, "ratio_per_eta_eps1": r1,
               "eta_hu24": HU24_ETA, "eta_eps1": HU24_ETA * r01 / r1, "grad_ratio_init_target": HU24_ETA * r01,
               "param_checksum": _checksum(model), "seconds": time.perf_counter() - started,
               "rule": "eta_eps1 = 1e-3 * r(0.1) / r(1), r = ||grad mu_SRR|| / ||grad CE|| per unit eta, last layer, "
                       "seed 0's initial weights, the run's probe images, label smoothing 0.1"}
    write_json(path, payload)
    return payload


# ----- tables ------------------------------------------------------------------------------------------------
def aggregate(runs: list[dict]) -> list[dict]:
    """Per arm: mean ± std of test accuracy and the paired change against ``ce`` (same seed)."""
    base = {r["seed"]: r["test_accuracy"] for r in runs if r["arm"] == "ce"}
    table = []
    for arm in [a for a in (*ARMS, "tost_tied") if any(r["arm"] == a for r in runs)]:
        rows = [r for r in runs if r["arm"] == arm]
        mean, std = mean_std([r["test_accuracy"] for r in rows])
        diffs = [r["test_accuracy"] - base[r["seed"]] for r in rows if r["seed"] in base and arm != "ce"]
        d_mean, d_std = mean_std(diffs) if diffs else (float("nan"), float("nan"))
        table.append({"arm": arm, "eta": rows[0]["eta"], "srr_eps": rows[0]["srr_eps"], "seeds": len(rows),
                      "test_accuracy_mean": mean, "test_accuracy_std": std, "paired_seeds": len(diffs),
                      "paired_delta_mean": d_mean, "paired_delta_std": d_std,
                      "grad_ratio_init": float(np.mean([r["grad_ratio_init"] for r in rows])),
                      "grad_ratio_end": float(np.mean([r["grad_ratio_end"] for r in rows]))})
    return table


def jobs_for(args, eta_eps1: float | None) -> list[dict]:
    common = dict(data_dir=str(args.data_dir), device=args.device, threads=args.threads, epochs=args.epochs,
                  measure_samples=args.measure_samples, checkpoint_every=args.checkpoint_every,
                  results=str(args.out), train_subset=args.train_subset, overrides=args.overrides)
    if args.tost_tied:
        return [{**common, "model": args.model + TIED, "variant": None, "arm": "tost_tied", "seed": s, "eta": HU24_ETA,
                 "srr_eps": HU24_EPS, "run_dir": str(args.out / RUNS_DIR / f"s{s}-tost_tied")}
                for s in args.seeds]
    settings = {"ce": (0.0, HU24_EPS), "hu24": (HU24_ETA, HU24_EPS), "eps1": (eta_eps1, EPS1)}
    return [{**common, "model": args.model, "variant": None, "arm": arm, "seed": s, "eta": settings[arm][0],
             "srr_eps": settings[arm][1], "run_dir": str(args.out / RUNS_DIR / f"s{s}-{arm}")}
            for s in args.seeds for arm in args.arms]


def main(argv=None) -> dict:
    from experiments._cifar import data_dir

    args = parse_args(NAME, __doc__, argv, extra=[
        (("--arms",), dict(nargs="+", default=list(ARMS), choices=ARMS, help="arms (default ce hu24 eps1)")),
        (("--seeds",), dict(type=int, nargs="+", default=None, help="paired seeds (default 0 1 2; quick 0)")),
        (("--epochs",), dict(type=int, default=None, help="epochs per run (default 10; quick 1)")),
        (("--tost-tied",), dict(action="store_true", help="§4: the recipe with variant tost, output tied to U "
                                "(default --out experiments/results/cifar_recipe_tost_tied)")),
        (("--checkpoint-every",), dict(type=int, default=None, help="optimiser steps between checkpoints "
                                       "(default 200; quick 0)")),
        (("--max-runs",), dict(type=int, default=None, help="train at most this many runs, then tabulate")),
        (("--workers",), dict(type=int, default=1, help="runs at once, in worker processes")),
        (("--device",), dict(default="cpu", help="torch device of the training (cpu, cuda)")),
        (("--data-dir",), dict(default=None, help="CIFAR-10 folder (default ../shared/data/cifar10)"))])
    started = time.perf_counter()
    if args.tost_tied and "--out" not in args.argv:
        args.out = RESULTS / "cifar_recipe_tost_tied" / ("quick" if args.quick else "")
        args.out.mkdir(parents=True, exist_ok=True)
    args.data_dir = str(data_dir(args.data_dir))
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.epochs = args.epochs or (1 if args.quick else 10)
    args.checkpoint_every = args.checkpoint_every if args.checkpoint_every is not None else (0 if args.quick else 200)
    args.measure_samples = 32 if args.quick else 256
    args.train_subset = 256 if args.quick else None
    args.model = "crate_nano" if args.quick else "crate_micro"  # quick: d 64, 4 layers, 65 tokens at 32 px
    args.overrides = dict(val_fraction=0.01) if args.quick else {}
    calibration = None
    if not args.tost_tied and "eps1" in args.arms:
        probe_job = jobs_for(args, None)[0] | {"seed": args.seeds[0], "eta": 0.0, "srr_eps": HU24_EPS}
        calibration = calibrate(probe_job, args.out / "calibration.json")
        print(f"calibration: r(0.1) = {calibration['ratio_per_eta_eps0.1']:.3f}, r(1) = "
              f"{calibration['ratio_per_eta_eps1']:.3f} per unit η → η(ε = 1) = {calibration['eta_eps1']:.4g}",
              flush=True)
    jobs = jobs_for(args, calibration["eta_eps1"] if calibration else None)
    todo = [j for j in jobs if not (args.out / ROWS_DIR / f"{run_key(j)}.json").is_file()]
    print(f"{len(todo)} runs to train, {len(jobs) - len(todo)} already finished in {args.out}", flush=True)
    if args.max_runs is not None:
        todo = todo[: args.max_runs]

    def progress(i, n, row):
        print(f"[{i}/{n}] seed {row['seed']} {row['arm']} (η = {row['eta']:.3g}, ε = {row['srr_eps']:g}): test acc "
              f"{row['test_accuracy']:.4f}, grad ratio {row['grad_ratio_init']:.3g} → {row['grad_ratio_end']:.3g} "
              f"({row['train_time_s'] / 60:.1f} min)", flush=True)

    run_jobs(run_one, todo, workers=args.workers, progress=progress)
    runs = [json.loads(p.read_text()) for p in sorted((args.out / ROWS_DIR).glob("*.json"))]
    order = {a: i for i, a in enumerate((*ARMS, "tost_tied"))}
    runs.sort(key=lambda r: (r["seed"], order[r["arm"]]))
    payload = summary(NAME, args, started, dataset="cifar10 (JPEG)", data_dir=args.data_dir,
                      model=args.model + (TIED if args.tost_tied else ""), epochs=args.epochs, seeds=args.seeds,
                      arms=args.arms if not args.tost_tied else ["tost_tied"], calibration=calibration,
                      runs_finished=len(runs), runs_trained_this_invocation=len(todo), device=args.device)
    if runs:
        write_csv(args.out / "runs.csv", runs)
        table = aggregate(runs)
        write_csv(args.out / "table.csv", table)
        (args.out / "table.md").write_text(markdown_table(table, list(table[0]), {
            "test_accuracy_mean": ".4f", "test_accuracy_std": ".4f", "paired_delta_mean": "+.4f",
            "paired_delta_std": ".4f", "grad_ratio_init": ".3g", "grad_ratio_end": ".3g", "eta": ".4g"}))
        payload["table"] = table
    previous = args.out / "summary.json"
    history = json.loads(previous.read_text()).get("invocations", []) if previous.is_file() else []
    payload["invocations"] = history + [{"command": payload["command"], "seconds": payload["seconds"],
                                         "runs_trained": len(todo), "machine": payload["machine"],
                                         "finished_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}]
    write_json(previous, payload)
    return payload


if __name__ == "__main__":
    main()
