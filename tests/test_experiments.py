"""The experiments of docs/results.md: every quick mode runs (the CI smoke test), and the pieces
the experiments add on top of the library compute what their docstrings say."""
import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from experiments import decompression, generalization, layerwise, regularization, zoo
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

@pytest.mark.parametrize("module, files", [
    (decompression, ["layers.csv", "sweep.csv", "table.md", "summary.json", "decompression.png", "sweep.png"]),
    (layerwise, ["layers.csv", "table.csv", "table.md", "summary.json", "layerwise.png", "training.png"]),
    (zoo, ["runs.csv", "table.csv", "table.md", "summary.json", "zoo.png"]),
    (regularization, ["runs.csv", "table.csv", "table.md", "summary.json", "regularization.png"]),
    (generalization, ["models.csv", "kendall.csv", "kendall.md", "summary.json", "generalization.png"]),
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

def test_regularization_aggregate_reports_change_against_plain_cross_entropy():
    runs = [{"variant": "crate", "layers": "none", "policy": "model", "eta": 0.0, "test_acc": a} for a in (0.9, 0.8)]
    runs += [{"variant": "crate", "layers": "last", "policy": "model", "eta": 1e-3, "test_acc": a} for a in (0.95, 0.85)]
    table = {r["layers"]: r for r in regularization.aggregate(runs)}
    assert table["none"]["test_acc_mean"] == pytest.approx(0.85)
    assert table["last"]["delta_vs_ce"] == pytest.approx(0.05)
    assert table["last"]["test_acc_std"] == pytest.approx(math.sqrt(0.005))


def test_generalization_statistics_rank_a_perfect_measure_first():
    models = []
    for i, (variant, lr) in enumerate([(v, lr) for v in ("a", "b") for lr in (1, 2)]):
        gap = float(i)
        models.append({"variant": variant, "lr": lr, "gap": gap,
                       **{m: (gap if m == "srr" else -gap) for m in generalization.MEASURES}})
    stats = {r["measure"]: r for r in generalization.statistics(models, ["variant", "lr"])}
    assert stats["srr"]["tau"] == pytest.approx(1.0) and stats["srr"]["Psi"] == pytest.approx(1.0)
    assert stats["path_norm"]["tau"] == pytest.approx(-1.0)


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
