"""Fine-tuning a public-format CRATE checkpoint from the command line (issue 11's closing result).

Every step is an ``srr`` command (run as ``python -m srr``), recorded with its wall time:

1. ``srr train`` crate_micro briefly on CIFAR-10 (32 px, 10 classes);
2. export its weights as the public CRATE code saves them (``{"model": {"module.<key>": …}}``, no config);
3. ``srr eval`` and ``srr measure`` that ``.pth`` with ``--model crate_micro --pretrained``;
4. an image folder of ``CLASSES`` CIFAR-10 classes made from the real JPEGs of the CIFAR-10 *test*
   split (images the pre-training never saw; the classes themselves it did see, with a 10-way head);
5. ``srr train --init-from`` the ``.pth`` on that folder at ``--image-size 24`` (a new 4-way head; the
   position embedding interpolated from 8×8 to 6×6 patches), and the same command without
   ``--init-from`` (from scratch), same epochs, same seed, same options;
6. ``srr attention`` of the fine-tuned run.

Run: ``nice -n 10 python -m experiments.finetune`` (about 10 min of CPU on one thread) or ``--quick``.
Writes ``summary.json``, ``runs.csv`` (per-epoch rows of the three runs), ``README.md``, ``attention.png``,
``measure/`` (of the public checkpoint) and each run's ``config.json``/``metrics.jsonl``/``summary.json``;
checkpoints stay in ``--work`` (default ``runs/finetune``).
"""
from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

from experiments._cifar import data_dir
from experiments._common import markdown_table, parse_args, summary, write_csv, write_json

NAME = "finetune"
CLASSES = ("airplane", "cat", "ship", "truck")  # the fine-tuning task: 4 of CIFAR-10's classes
FULL = dict(pretrain_epochs=2, pretrain_subset=15000, per_class_train=500, per_class_test=300, epochs=10,
            image_size=24)
QUICK = dict(pretrain_epochs=1, pretrain_subset=256, per_class_train=16, per_class_test=8, epochs=1, image_size=24)


def srr(args: list, *, log: list[dict], step: str, threads: int) -> subprocess.CompletedProcess:
    """Run ``python -m srr ARGS``; record the command (as ``srr ARGS``) and its wall time in ``log``."""
    argv = [str(a) for a in args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "srr", *argv], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    log.append({"step": step, "command": "srr " + shlex.join(argv), "wall_s": round(wall, 1),
                "exit_code": done.returncode, "notes": [line for line in done.stderr.splitlines() if "note:" in line]})
    if done.returncode != 0:
        raise SystemExit(f"{step} failed (exit {done.returncode}): srr {shlex.join(argv)}\n{done.stdout}{done.stderr}")
    return done


def export_public(checkpoint: Path, path: Path) -> Path:
    """The run's weights as the public CRATE training script saves them: ``{"model": …}``, ``module.`` keys."""
    from srr.models import create_model

    model = create_model(checkpoint=checkpoint)
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}, "epoch": 0}, path)
    return path


def image_folder(cifar: Path, root: Path, *, per_class_train: int, per_class_test: int) -> Path:
    """``root/{train,test}/<class>/`` linking the first images of each class of CIFAR-10's test split."""
    shutil.rmtree(root, ignore_errors=True)
    for name in CLASSES:
        files = sorted((cifar / "test" / name).iterdir())[: per_class_train + per_class_test]
        for split, chosen in (("train", files[:per_class_train]), ("test", files[per_class_train:])):
            folder = root / split / name
            folder.mkdir(parents=True)
            for file in chosen:
                (folder / file.name).symlink_to(file.resolve())
    return root


def model_srr(measured: dict) -> float:
    """``srr measure``'s headline: μ_SRR of the output tokens, averaged over layers."""
    values = [row["srr"] for row in measured["rows"] if row["site"] == "out"]
    return sum(values) / len(values)


def keep_run(run: Path, out: Path) -> None:
    """A run's small files (no checkpoints) into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "metrics.jsonl", "summary.json"):
        shutil.copy(run / name, out / name)


def main(argv=None) -> dict:
    args = parse_args(NAME, __doc__, argv, extra=[
        (("--data-dir",), dict(default=None, help="CIFAR-10 folder (default $SRR_DATA_DIR or ../shared/data/cifar10)")),
        (("--work",), dict(type=Path, default=None, help="checkpoints and the image folder (default runs/finetune)")),
    ])
    started = time.perf_counter()
    setting = QUICK if args.quick else FULL
    cifar = Path(os.path.relpath(data_dir(args.data_dir)))  # paths as typed from the repository
    out = Path(os.path.relpath(args.out))
    work = args.work or Path("runs") / (f"{NAME}-quick" if args.quick else NAME)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    log: list[dict] = []
    common = ["--threads", args.threads, "--device", "cpu", "--workers", 0, "--seed", args.seed, "--quiet"]

    pretrain = work / "pretrain"
    srr(["train", "--model", "crate_micro", "--dataset", "cifar10", "--data-dir", cifar,
         "--epochs", setting["pretrain_epochs"], "--train-subset", setting["pretrain_subset"], "--warmup", 0.3,
         "--out", pretrain, *common], log=log, step="pretrain", threads=args.threads)
    public = export_public(pretrain / "checkpoints" / "latest.pt", work / "crate_micro_cifar10.pth")
    log.append({"step": "export", "command": f"python: torch.save({{'model': {{'module.' + k: v}}}}, {public})",
                "wall_s": 0.0, "exit_code": 0, "notes": []})
    source = ["--model", "crate_micro", "--pretrained", public, "--dataset", "cifar10", "--data-dir", cifar,
              "--device", "cpu"]
    evaluated: dict = json.loads(srr(["eval", *source, "--json"], log=log, step="eval", threads=args.threads).stdout)
    measured = json.loads(srr(["measure", *source, "--split", "test", "--samples", 256, "--out", out / "measure",
                               "--format", "json"], log=log, step="measure", threads=args.threads).stdout)

    folder = image_folder(cifar, work / "four_classes", per_class_train=setting["per_class_train"],
                          per_class_test=setting["per_class_test"])
    task = ["--model", "crate_micro", "--dataset", "imagefolder", "--data-dir", folder,
            "--image-size", setting["image_size"], "--epochs", setting["epochs"], "--warmup", 1, *common]
    runs = {"finetuned": work / "finetuned", "scratch": work / "scratch"}
    srr(["train", *task, "--init-from", public, "--out", runs["finetuned"]], log=log, step="finetune",
        threads=args.threads)
    srr(["train", *task, "--out", runs["scratch"]], log=log, step="scratch", threads=args.threads)
    attention = out / "attention.png"
    srr(["attention", runs["finetuned"], "--images", 4, "--out", attention, "--device", "cpu"], log=log,
        step="attention", threads=args.threads)

    results, rows = {}, []
    for name, run in {"pretrain": pretrain, **runs}.items():
        keep_run(run, args.out / name)
        result = json.loads((run / "summary.json").read_text())
        results[name] = {k: result[k] for k in ("test_accuracy", "test_loss", "best_val_accuracy", "epochs",
                                                "train_time_s", "train_images_per_s", "srr_last_layer")}
        for line in (run / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            rows.append({"run": name, **{k: row.get(k) for k in ("epoch", "train_loss", "train_accuracy",
                                                                 "val_loss", "val_accuracy", "srr_mean")}})
    write_csv(args.out / "runs.csv", rows)
    finetuned, scratch = results["finetuned"]["test_accuracy"], results["scratch"]["test_accuracy"]
    evaluated["eval_equals_run"] = evaluated["accuracy"] == results["pretrain"]["test_accuracy"]
    payload = summary(
        NAME, args, started, setting=setting, classes=list(CLASSES), data_dir=str(cifar),
        commit=subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None,
        public_checkpoint={"eval": evaluated, "model_srr": model_srr(measured),
                           "notes": [n for entry in log if entry["step"] == "finetune" for n in entry["notes"]]},
        runs=results, finetuned_minus_scratch=finetuned - scratch, attention_png=str(attention),
        steps=log, cpu_wall_s=round(sum(entry["wall_s"] for entry in log), 1),
    )
    write_json(args.out / "summary.json", payload)
    write_readme(args.out / "README.md", payload)
    return payload


def write_readme(path: Path, payload: dict) -> None:
    runs, setting, machine = payload["runs"], payload["setting"], payload["machine"]
    table = markdown_table(
        [{"run": name, **values} for name, values in runs.items()],
        ["run", "epochs", "test_accuracy", "best_val_accuracy", "test_loss", "train_time_s", "train_images_per_s"],
        {"test_accuracy": ".4f", "best_val_accuracy": ".4f", "test_loss": ".4f", "train_time_s": ".1f",
         "train_images_per_s": ".0f"})
    steps = "\n".join(f"{i}. `{entry['command']}` ({entry['wall_s']} s)" for i, entry in enumerate(payload["steps"], 1))
    evaluated = payload["public_checkpoint"]["eval"]
    model_srr_value, classes = payload["public_checkpoint"]["model_srr"], payload["classes"]
    test_images = setting["per_class_test"] * len(classes)
    accuracy = runs["finetuned"]["test_accuracy"]
    standard_error = math.sqrt(accuracy * (1 - accuracy) / test_images)
    text = f"""# Fine-tuning a public-format CRATE checkpoint from the CLI

`{payload['command']}` — {payload['cpu_wall_s']} s of commands on {machine['processor']} ({machine['cpus']} CPUs,
`--threads 1`, under `nice -n 10` beside other jobs), torch {machine['torch']}, commit `{payload['commit']}`.

crate_micro was pre-trained on CIFAR-10 (epochs: {setting['pretrain_epochs']}, on {setting['pretrain_subset']}
training images, 32 px), exported as the public CRATE code saves a checkpoint
(`{{"model": {{"module.<key>": …}}}}`, no config), then evaluated (`srr eval`: test accuracy
{evaluated['accuracy']:.4f} on {evaluated['n']} CIFAR-10 test images; equal to the pre-training run's own:
{evaluated['eval_equals_run']}), measured (`srr measure`: model μ_SRR {model_srr_value:.2f}, see `measure/`)
and fine-tuned with `srr train --init-from` on {len(classes)} classes ({', '.join(classes)}) at
{setting['image_size']} px: {setting['per_class_train']} training and {setting['per_class_test']} test images per
class, taken from CIFAR-10's *test* JPEGs, which pre-training never saw (its classes it did see, through a
10-way head that fine-tuning replaces). "scratch" is the same command without `--init-from`: same epochs
({setting['epochs']}), seed, learning rate and schedule.

{table}
Fine-tuned minus scratch test accuracy: **{payload['finetuned_minus_scratch']:+.4f}** on {test_images} test images
(binomial standard error of each accuracy ≈ {standard_error:.4f}); one seed, one short pre-training.

The fine-tuning run said: {'; '.join(n.split('note:', 1)[1].strip() for n in payload['public_checkpoint']['notes'])}.

Attention of the fine-tuned model (last layer, CLS attention per head and the PCA of patch features):
`{payload['attention_png']}`.

Commands, in order, run from the repository root (checkpoints and the image folder in `runs/`, not committed):

{steps}
"""
    path.write_text(text)


if __name__ == "__main__":
    main()
