"""Cost against the number of tokens (issue 14): the timing core ``srr.bench.bench_tssa`` (TSSA vs
softmax MSSA (SDPA) vs exact compression, one layer at d = 384, K = 6, batch 1) run over N, with its
results written:

    python -m experiments.bench.bench_tssa [--quick] [--device cpu|cuda] [--threads T] [--repeats R] [--tokens N ...]

Writes ``experiments/results/tssa_scaling/`` (``--quick``: ``.../quick/``): ``runs.csv``, ``table.md``,
``summary.json`` (command, machine, TSSA's time ratio over the N range, where TSSA overtakes SDPA).
"""
from __future__ import annotations

import time

from experiments._common import markdown_table, parse_args, pyplot, summary, write_csv, write_json
from srr.bench.bench_tssa import FULL_TOKENS, LAYERS, PASSES, QUICK_TOKENS, crossover, measure

NAME = "tssa_scaling"


def main(argv=None) -> dict:
    args = parse_args(NAME, __doc__, argv, extra=[
        (("--device",), dict(default="cpu", help="cpu or cuda")),
        (("--repeats",), dict(type=int, default=None, help="timed runs after the warm-up (default 3; quick 1)")),
        (("--tokens",), dict(type=int, nargs="+", default=None, help="token counts N (default 256 … 16384; "
                                                                     "quick 256 1024)")),
    ])
    started = time.perf_counter()
    tokens = tuple(args.tokens or (QUICK_TOKENS if args.quick else FULL_TOKENS))
    repeats = args.repeats or (1 if args.quick else 3)
    dim, heads = 384, 6
    rows = []
    for n in tokens:
        for name in LAYERS:
            for mode in PASSES:
                row = measure(name, n, mode, dim=dim, heads=heads, device=args.device, threads=args.threads,
                              repeats=repeats)
                rows.append(row)
                print(f"{name:5s} N={n:6d} {mode:7s} {row['seconds'] * 1e3:9.2f} ms {row['peak_mib']:9.1f} MiB",
                      flush=True)
    write_csv(args.out / "runs.csv", rows)
    times = {(r["layer"], r["tokens"], r["pass"]): r["seconds"] for r in rows}
    lo, hi = min(tokens), max(tokens)
    growth = {f"{name}_{mode}": times[(name, hi, mode)] / times[(name, lo, mode)] for name in LAYERS for mode in PASSES}
    table = [{"N": r["tokens"], "layer": r["layer"], "pass": r["pass"], "ms": r["seconds"] * 1e3,
              "peak MiB": r["peak_mib"]} for r in rows]
    (args.out / "table.md").write_text(markdown_table(table, ["N", "layer", "pass", "ms", "peak MiB"],
                                                      {"ms": ".2f", "peak MiB": ".1f"}) + "\n")
    payload = summary(NAME, args, started, device=args.device, dim=dim, heads=heads, batch=1, tokens=list(tokens),
                      repeats=repeats, token_ratio=hi / lo, time_ratio=growth,
                      tssa_overtakes_sdpa_at={mode: crossover(rows, mode) for mode in PASSES}, rows=rows)
    payload["command"] = " ".join(["python -m experiments.bench.bench_tssa", *args.argv])
    write_json(args.out / "summary.json", payload)
    plot(rows, args.out / "scaling.png", device=args.device)
    return payload


def plot(rows: list[dict], path, *, device: str = "cpu") -> None:
    """Time and peak memory against N, log-log, one line per layer, forward and train side by side."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    labels = {"tssa": "TSSA (ToST, E13)", "sdpa": "softmax MSSA (SDPA)", "exact": "exact compression (E6)"}
    for name in LAYERS:
        for ax, (mode, key, scale, ylabel) in zip(axes, (("forward", "seconds", 1e3, "forward time (ms)"),
                                                         ("train", "seconds", 1e3, "forward + backward time (ms)"),
                                                         ("train", "peak_mib", 1, "peak memory, train (MiB)"))):
            sel = sorted((r["tokens"], r[key] * scale) for r in rows if r["layer"] == name and r["pass"] == mode)
            ax.plot([n for n, _ in sel], [v for _, v in sel], marker="o", ms=3, label=labels[name])
            ax.set(xscale="log", yscale="log", xlabel="tokens N", ylabel=ylabel)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"One compression layer, d = 384, K = 6, batch 1, {device}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
