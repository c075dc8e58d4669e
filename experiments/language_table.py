"""The language-model tables of docs/results.md §9, printed from the files under experiments/results/language/.

    python -m experiments.language_table
"""
from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "language"
NAMES = {"gpt_lm_nano": "GPT (nanoGPT's, baseline)", "crate_lm_nano": "`crate_lm` (CRATE-GPT)",
         "tost_lm_nano": "`tost_lm` (ToST)", "crate_lm_exact_nano": "`crate_lm_exact` (E14 step)"}


def bench_table(path: Path = RESULTS / "bench_lm.json") -> str:
    data = json.loads(path.read_text())
    lines = ["| model | val loss @ 2000 | best | − GPT (nats) | tokens/s in its run | tokens/s, alternating "
             "rounds (× GPT) | parameters |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, m in data["models"].items():
        c = data.get("comparison", {}).get(name, {})
        fair = m.get("tokens_per_s_interleaved")
        ratio = c.get("tokens_per_s_ratio_interleaved")
        fair_text = f"{fair:,.0f} ({ratio:.2f}×)" if fair is not None and ratio is not None else "not measured"
        lines.append(f"| {NAMES.get(name, name)} | {m['val_loss']:.4f} | {m['best_val_loss']:.4f} | "
                     f"{c.get('val_loss_gap', float('nan')):+.3f} | {m['tokens_per_s']:,.0f} | {fair_text} | "
                     f"{m['parameters']:,} |")
    return "\n".join(lines)


def round_ratios(path: Path = RESULTS / "throughput_interleaved_quiet.json", baseline: str = "gpt_lm_nano") -> dict:
    """Each model's tokens/s over the baseline's: the median of the rates' ratio, and the median of the ratios
    within each round (adjacent in time, so under the same load)."""
    import statistics

    data = json.loads(path.read_text())
    rates, rounds = data["tokens_per_s"], data["rounds_tokens_per_s"]
    return {name: {"median_rates_ratio": rates[name] / rates[baseline],
                   "median_round_ratio": statistics.median(a / b for a, b in zip(rounds[name], rounds[baseline])),
                   "round_ratios": [a / b for a, b in zip(rounds[name], rounds[baseline])]} for name in rates}


def layers_table(path: Path = RESULTS / "crate_lm_layers.json") -> str:
    data = json.loads(path.read_text())
    lines = ["| layer | raw R^c: LN₁Z^ℓ → LN₁Z^{ℓ+½} | unit-normalised R^c | sparsity of Z^{ℓ+1} | at init: raw, unit, "
             "sparsity |", "| --- | --- | --- | --- | --- |"]
    for r, r0 in zip(data["trained"], data["initial"]):
        lines.append(f"| {r['layer']} | {r['rc_before_raw']:.1f} → {r['rc_after_raw']:.1f} | "
                     f"{r['rc_before_unit']:.1f} → {r['rc_after_unit']:.1f} | {r['sparsity']:.3f} | "
                     f"{r0['rc_before_raw']:.1f} → {r0['rc_after_raw']:.1f}, {r0['rc_before_unit']:.1f} → "
                     f"{r0['rc_after_unit']:.1f}, {r0['sparsity']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(bench_table())
    print()
    for name, r in round_ratios().items():
        print(f"{name}: {r['median_rates_ratio']:.2f}x (median rates), {r['median_round_ratio']:.2f}x (median round "
              f"ratio), rounds {', '.join(f'{x:.2f}' for x in r['round_ratios'])}")
    print()
    print(layers_table())
