"""The training loop's hooks (srr/train/callbacks.py): the per-epoch SRR measurement is a callback like
any user's, installed by default; a user's callback sees the rows the run records and can add its own
measurements and figures; without the measurement callback the run has no measurement outputs."""
from __future__ import annotations

import json

import pytest

from srr.train import Callback, JSONLLogger, RunDir, SRRMeasurement, TrainConfig, default_callbacks, train

SMALL = dict(epochs=2, batch_size=32, train_subset=64, measure_samples=8, threads=1, device="cpu")


class Recorder(Callback):
    """Records every epoch event; adds one measurement of its own and one figure."""

    def __init__(self):
        self.events, self.rows = [], []

    def on_epoch_metrics(self, trainer, row):
        self.events.append(("metrics", row["epoch"], "srr_per_layer" in row))
        row["weight_norm"] = sum(p.norm().item() ** 2 for p in trainer.model.parameters()) ** 0.5

    def on_epoch_end(self, trainer, row):
        self.events.append(("end", row["epoch"]))
        self.rows.append(dict(row))

    def on_plots(self, trainer, rows):
        path = trainer.run_dir.plots / "weight_norm.txt"
        path.write_text("\n".join(str(r["weight_norm"]) for r in rows))
        return [path]


def test_a_user_callback_sees_the_rows_the_run_records_after_the_measurement(tmp_path):
    recorder = Recorder()
    result = train(TrainConfig(out=str(tmp_path / "run"), **SMALL), callbacks=[recorder])
    # the default measurement ran first, so the user's hook already sees its keys
    assert recorder.events == [("metrics", 1, True), ("end", 1), ("metrics", 2, True), ("end", 2)]
    recorded = RunDir(tmp_path / "run").read_metrics()
    assert recorder.rows == recorded
    assert all("weight_norm" in r and len(r["srr_per_layer"]) == result.model.config.depth for r in recorded)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert [p.rsplit("/", 1)[1] for p in summary["plots"]] == ["curves.png", "srr_layers.png", "weight_norm.txt"]


@pytest.mark.parametrize("how", ["defaults_off", "filtered"])
def test_without_the_measurement_callback_the_run_has_no_measurement_outputs(tmp_path, how):
    config = TrainConfig(out=str(tmp_path / "measured"), **SMALL)
    measured = train(config)
    bare_config = config.replace(out=str(tmp_path / "bare"), logger="jsonl")
    if how == "defaults_off":
        bare = train(bare_config, callbacks=[JSONLLogger(tmp_path / "bare")], defaults=False)
    else:
        kept = [c for c in default_callbacks(bare_config, tmp_path / "bare") if not isinstance(c, SRRMeasurement)]
        bare = train(bare_config, callbacks=kept, defaults=False)
    rows = RunDir(tmp_path / "bare").read_metrics()
    assert not any("srr_per_layer" in r or "srr_mean" in r for r in rows)
    assert bare.srr_per_layer == [] and not (tmp_path / "bare" / "plots" / "srr_layers.png").exists()
    assert (tmp_path / "bare" / "plots" / "curves.png").is_file()
    assert (tmp_path / "bare" / "log.jsonl").is_file()  # the logger is still there, once
    epochs = [json.loads(line) for line in (tmp_path / "bare" / "log.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    # measuring never changes training: the same losses with and without it
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in measured.metrics]
    assert measured.srr_per_layer and (tmp_path / "measured" / "plots" / "srr_layers.png").is_file()


def test_default_callbacks_follow_the_config(tmp_path):
    kinds = lambda config: [type(c).__name__ for c in default_callbacks(config, tmp_path)]  # noqa: E731
    assert kinds(TrainConfig()) == ["SRRMeasurement"]
    assert kinds(TrainConfig(measure_samples=0, logger="csv")) == ["CSVLogger"]
    measurement = default_callbacks(TrainConfig(srr_eps=0.5, srr_lam=0.2), tmp_path)[0]
    assert (measurement.eps, measurement.lam) == (0.5, 0.2)


def test_the_measurement_without_probe_images_is_refused_naming_the_option(tmp_path):
    config = TrainConfig(out=str(tmp_path / "run"), **{**SMALL, "measure_samples": 0, "epochs": 1})
    with pytest.raises(ValueError, match="measure_samples must be >= 1, got 0"):
        train(config, callbacks=[SRRMeasurement()])
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        SRRMeasurement(eps=0.0)
