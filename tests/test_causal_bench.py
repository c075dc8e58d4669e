"""``srr bench --only causal`` (``srr.bench.bench_causal``): its budgets, crossover and table, and its headlines in
``srr bench``; the timing itself is exercised by the slow smoke run."""
from __future__ import annotations

import json

import pytest

from srr.bench import bench_causal
from srr.cli import bench as cli_bench


def _row(layer, T, mode, seconds, mib=10.0):
    return {"layer": layer, "tokens": T, "pass": mode, "seconds": seconds, "first_seconds": 2 * seconds,
            "peak_mib": mib}


def test_prediction_scales_sdpa_quadratically_and_the_others_linearly():
    secs, mib = bench_causal._predicted(_row("sdpa", 256, "train", 1.0, 100.0), "sdpa", 1024, repeats=2)
    assert secs == pytest.approx(bench_causal.SPAWN_S + 3 * 16.0) and mib == pytest.approx(400.0)
    secs, _ = bench_causal._predicted(_row("tssa", 256, "train", 1.0), "tssa", 1024, repeats=2)
    assert secs == pytest.approx(bench_causal.SPAWN_S + 3 * 4.0)


def test_crossover_is_the_first_T_from_which_tssa_stays_faster():
    rows = [_row("tssa", 256, "train", 2.0), _row("sdpa", 256, "train", 1.0),
            _row("tssa", 512, "train", 1.0), _row("sdpa", 512, "train", 2.0),
            _row("tssa", 1024, "train", 3.0), _row("sdpa", 1024, "train", 2.0),
            _row("tssa", 2048, "train", 1.0), _row("sdpa", 2048, "train", 4.0)]
    assert bench_causal.crossover(rows, "train") == 2048
    assert bench_causal.crossover(rows[:2], "train") is None
    assert bench_causal.crossover(rows, "forward") is None


def test_table_marks_skipped_measurements():
    text = bench_causal.table([_row("tssa", 256, "forward", 0.5)],
                              [{"layer": "exact", "tokens": 256, "pass": "forward", "reason": "budget"}])
    line = next(line for line in text.splitlines() if line.startswith("| 256 | forward"))
    assert "0.5 (10)" in line and "skipped" in line and "—" in line


def test_srr_bench_knows_causal_and_reads_its_headlines(tmp_path):
    bench = next(b for b in cli_bench.BENCHES if b.name == "causal")
    assert bench.module == "bench_causal" and not bench.default
    assert bench.argv(True, "cpu") == ["--device", "cpu", "--quick"]
    result = {"at_largest_common_T": {"train": {"tokens": 4096, "tssa_vs_sdpa_speedup": 3.5}},
              "tssa_faster_than_sdpa_from": {"forward": None, "train": 1024}}
    shown = {h.metric: h.shown() for h in bench.headlines(result)}
    assert shown["causal TSSA vs causal MSSA (SDPA), train at T=4096 (speed-up)"] == "3.5×"
    assert shown["causal TSSA faster than SDPA (train) from T"] == "1 k tokens"
    assert shown["causal TSSA vs causal MSSA (SDPA), forward at T=largest T (speed-up)"] == "not measured"
    json.dumps([h.metric for h in bench.headlines({})])


@pytest.mark.slow
def test_the_benchmark_runs_and_writes_its_json(tmp_path):
    out = tmp_path / "causal.json"
    result = bench_causal.main(["--tokens", "64", "128", "--dim", "32", "--heads", "2", "--repeats", "1",
                                "--out", str(out)])
    saved = json.loads(out.read_text())
    assert {r["layer"] for r in saved["rows"]} == set(bench_causal.LAYERS) and saved["git_commit"]
    assert saved["command"].startswith("python -m srr.bench.bench_causal") and result["machine"]["torch"]
