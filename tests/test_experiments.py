"""The experiments of docs/results.md: every quick mode runs (the CI smoke test), and the pieces
the experiments add on top of the library compute what their docstrings say."""
import json
import math
import os

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from experiments import _cifar, cifar_loader, decompression, generalization, layerwise, regularization, zoo
from experiments._common import read_csv, write_csv
from experiments.decompression import ToySetting, make_updates, project, run_setting, second_order_update
from srr.data.subspaces import random_subspaces
from srr.rates import compressed_coding_rate, compressed_coding_rate_grad


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the experiments' --threads default sets 1


def _toy(seed=0, scale=1.0, tokens=24, dim=24, heads=3):
    g = torch.Generator().manual_seed(seed)
    basis = random_subspaces(1, dim, dim, generator=g, dtype=torch.float64)[0]
    U = basis.T.reshape(heads, dim // heads, dim).mT.contiguous()  # (K, d, p), orthonormal blocks
    Z = scale * torch.randn(tokens, dim, generator=g, dtype=torch.float64)
    return Z, U


# ----------------------------------------------------------------------------- quick modes

CIFAR = pytest.mark.skipif(not _cifar.DEFAULT_DATA_DIR.is_dir() and not os.environ.get("SRR_DATA_DIR"),
                           reason="the CIFAR-10 experiments need ../shared/data/cifar10 or $SRR_DATA_DIR")


@pytest.mark.parametrize("module, files", [
    (decompression, ["layers.csv", "sweep.csv", "table.md", "summary.json", "decompression.png", "sweep.png"]),
    pytest.param(layerwise, ["layers.csv", "results.csv", "table.csv", "table.md", "summary.json",
                             "layerwise_raw.png", "layerwise_yu23.png", "training.png"], marks=CIFAR),
    (zoo, ["runs.csv", "table.csv", "table.md", "summary.json", "zoo.png"]),
    pytest.param(regularization, ["runs.csv", "table.csv", "table.md", "summary.json", "regularization.png"],
                 marks=CIFAR),
    pytest.param(generalization, ["models.csv", "kendall.csv", "kendall.md", "summary.json", "generalization.png"],
                 marks=CIFAR),
    pytest.param(cifar_loader, ["summary.json"], marks=CIFAR),
])
def test_quick_mode_writes_its_results(module, files, tmp_path):
    payload = module.main(["--quick", "--out", str(tmp_path)])
    for name in files:
        assert (tmp_path / name).stat().st_size > 0, name
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["quick"] is True and saved["experiment"] == module.NAME
    assert payload["experiment"] == module.NAME
    assert not list(tmp_path.glob("*.partial.csv"))
    if module is zoo:  # the zoo covers every registered variant, the moment it is registered
        from srr.models import list_variants

        assert [r["variant"] for r in payload["table"]] == list_variants()


# ----------------------------------------------------------------------------- the toy's updates

@given(scale=st.floats(0.05, 3.0), seed=st.integers(0, 10**6))
def test_exact_update_never_increases_compressed_rate(scale, seed):
    Z, U = _toy(seed, scale)
    setting = ToySetting(tokens=Z.shape[0], dim=Z.shape[1], heads=U.shape[0])
    step = make_updates(U, setting)["exact"]
    with torch.no_grad():
        Z_next = step(Z)
    before, after = compressed_coding_rate(Z, U, setting.eps), compressed_coding_rate(Z_next, U, setting.eps)
    assert after <= before * (1 + 1e-12)


@given(scale=st.floats(0.01, 1.0), seed=st.integers(0, 10**6))
def test_second_order_update_increases_compressed_rate(scale, seed):
    """HU24's decompression: the second-order term alone, with the paper's sign, raises R^c."""
    Z, U = _toy(seed, scale)
    eps = 0.5
    Z_next = Z + second_order_update(Z, U, eps, step_size=1e-3)
    assert compressed_coding_rate(Z_next, U, eps) > compressed_coding_rate(Z, U, eps)


def test_second_order_update_is_the_neumann_term_of_the_exact_gradient():
    """−κ∇R^c = −κβ Σ_k A_k U_kᵀ + second_order_update + O(β³‖A‖⁵): the remainder shrinks like s⁵."""
    eps, kappa = 0.5, 0.1
    remainders = []
    for scale in (5e-3, 1e-2):
        Z, U = _toy(3, scale)
        beta = U.shape[-1] / (Z.shape[0] * eps**2)
        first = -kappa * beta * (project(Z, U) @ U.mT).sum(0)  # (N, d)
        second = second_order_update(Z, U, eps, kappa)
        exact = -kappa * compressed_coding_rate_grad(Z, U, eps)
        remainders.append(float((exact - first - second).norm()))
        assert float((exact - first - second).norm()) < 1e-2 * float(second.norm())
    assert remainders[1] / remainders[0] == pytest.approx(2**5, rel=0.1)


def test_toy_softmax_updates_match_the_attention_formula():
    """crate_c/n/t in the toy are srr.layers.MSSA; check them against (E8) written out."""
    Z, U = _toy(1, 0.5)
    setting = ToySetting(tokens=Z.shape[0], dim=Z.shape[1], heads=U.shape[0])
    maps = make_updates(U, setting)
    A = project(Z, U)  # (K, N, p)
    tau = U.shape[-1] ** -0.5
    o = (torch.softmax(tau * A @ A.mT, -1) @ A).transpose(0, 1).flatten(1)  # (N, K·p)
    W = U.permute(1, 0, 2).reshape(Z.shape[1], -1).T  # (K·p, d)
    with torch.no_grad():
        torch.testing.assert_close(maps["crate_c"](Z), Z + o @ W)
        torch.testing.assert_close(maps["crate_n"](Z), Z - o @ W)
        torch.testing.assert_close(maps["crate_t"](Z), Z + o @ W.T)


def test_trajectory_marks_divergence_instead_of_raising():
    setting = ToySetting(tokens=16, dim=12, heads=3, depth=6, scale=30.0)
    rows = run_setting(setting, 0, ["second_order"])["second_order"]
    assert len(rows) == setting.depth + 1
    assert rows[-1]["diverged"] and math.isinf(rows[-1]["rc"])
    assert decompression.verdict(rows) == "diverges"


# ----------------------------------------------------------------------------- tables

def test_regularization_aggregate_pairs_each_arm_with_plain_cross_entropy_of_its_seed():
    runs = [{"eta": 0.0, "seed": s, "test_acc": a} for s, a in ((0, 0.50), (1, 0.60), (2, 0.70))]
    runs += [{"eta": 1e-3, "seed": s, "test_acc": a} for s, a in ((0, 0.52), (1, 0.61), (2, 0.73))]
    for r in runs:
        r.update(grad_ratio_init=r["eta"], grad_ratio_end=r["eta"], grad_ratio_per_unit_eta_end=1.0)
    table = {r["eta"]: r for r in regularization.aggregate(runs)}
    assert table[0.0]["test_acc_mean"] == pytest.approx(0.6) and table[0.0]["paired_delta_mean"] == 0
    assert table[1e-3]["paired_delta_mean"] == pytest.approx(0.02)
    assert table[1e-3]["paired_delta_std"] == pytest.approx(float(np.std([0.02, 0.01, 0.03], ddof=1)))
    # unpaired, the same runs would show a spread of 0.1: pairing removes the seed-to-seed variation
    assert table[1e-3]["test_acc_std"] > 5 * table[1e-3]["paired_delta_std"]


def _grid_models(gap_of):
    models = []
    for seed in (0, 1):
        for i, (variant, lr) in enumerate([(v, lr) for v in ("a", "b") for lr in (1, 2)]):
            gap = gap_of(i, seed)
            models.append({"model_id": f"{variant}-{lr}", "seed": seed, "width": 64, "variant": variant, "lr": lr,
                           "gap": gap, **{m: (gap if m == "srr" else -gap) for m in generalization.MEASURES}})
    return models


def test_generalization_statistics_rank_a_perfect_measure_first_per_width_and_seed():
    models = _grid_models(lambda i, seed: float(i) + 0.1 * seed)
    stats = {(r["models"], r["measure"]): r for r in generalization.statistics(models, ["variant", "lr"])}
    for subset in ("width 64, seed 0", "width 64, seed 1"):
        assert stats[(subset, "srr")]["tau"] == pytest.approx(1.0)
        assert stats[(subset, "srr")]["Psi"] == pytest.approx(1.0)
        assert stats[(subset, "path_norm")]["tau"] == pytest.approx(-1.0)


def test_noise_ceiling_is_the_tau_between_the_two_seeds_gaps():
    same = generalization.noise_ceiling(_grid_models(lambda i, seed: float(i)))
    assert same[0]["tau_gap_between_seeds"] == pytest.approx(1.0) and same[0]["n"] == 4
    flipped = generalization.noise_ceiling(_grid_models(lambda i, seed: float(i if seed == 0 else -i)))
    assert flipped[0]["tau_gap_between_seeds"] == pytest.approx(-1.0)


def test_model_srr_rescores_any_saved_eps_and_lambda():
    rows = [{"l0": 100.0, "R[0.1]": 50.0, "Rc[0.1]": 30.0, "R[1]": 10.0, "Rc[1]": 8.0},
            {"l0": 200.0, "R[0.1]": 40.0, "Rc[0.1]": 35.0, "R[1]": 9.0, "Rc[1]": 7.0}]
    assert _cifar.model_srr(rows) == pytest.approx(((10 + 30 - 50) + (20 + 35 - 40)) / 2)
    assert _cifar.model_srr(rows, eps="1", lam=0.0) == pytest.approx(((8 - 10) + (7 - 9)) / 2)


@CIFAR
def test_layer_stats_match_the_library_rates_on_real_images():
    """The experiments' per-layer numbers are srr's rates of the model's own intermediates."""
    import srr

    torch.manual_seed(0)
    images = _cifar.load("test", _cifar.data_dir(None), subset=20).tensors[0]
    net = _cifar.model("crate", width=32, depth=2)
    rows = _cifar.layer_stats(net, images, batch_size=7)
    _, layers = net.forward_layer_tokens(images)
    out, U = layers[1].output.double(), net.blocks()[1].subspaces.double()
    assert rows[1]["R[0.1]"] == pytest.approx(srr.coding_rate(out, 0.1).mean().item(), rel=1e-6)
    assert rows[1]["Rc[p/N]"] == pytest.approx(
        srr.compressed_coding_rate(out, U, (8 / 65) ** 0.5).mean().item(), rel=1e-6)
    assert rows[1]["l0"] == pytest.approx((out != 0).sum().item() / 20)
    yu23 = srr.crate_vis_compressed_coding_rate(layers[0].mssa_input.double(), net.blocks()[0].subspaces.double())
    assert rows[0]["Rc_yu23_in"] == pytest.approx(yu23.mean().item(), rel=1e-6)
    assert 0 < rows[1]["zero_fraction"] < 1  # the ISTA output is sparse but not empty


def test_csv_round_trip_keeps_numbers_and_flags(tmp_path):
    rows = [{"a": 1, "b": 0.25, "c": True, "d": "x"}, {"a": 2, "b": math.inf, "c": False, "d": "y"}]
    write_csv(tmp_path / "t.csv", rows)
    assert read_csv(tmp_path / "t.csv") == rows


def test_api_reference_documents_every_public_name():
    import srr
    from experiments.make_api_doc import render

    text = render()
    for name in srr.__all__:
        assert f"`srr.{name}`" in text, name
    assert "*(listed in `__all__` but missing)*" not in text


def test_bench_ista_cache_times_inference_with_and_without_the_cache(tmp_path):
    from experiments import bench_ista_cache

    path = tmp_path / "ista.json"
    assert bench_ista_cache.main(["--quick", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["command"].startswith("python -m experiments.bench_ista_cache")
    for row in report["rows"]:
        assert row["cached_ms"] > 0 and row["uncached_ms"] > 0
        assert row["uncached_over_cached"] == pytest.approx(row["uncached_ms"] / row["cached_ms"])
    from srr.layers import ISTA

    assert ISTA.cache_inference is True  # restored
