"""Specification of the HU24 §5 statistics (Kendall τ, granulated Ψ) and the baseline measures."""
import copy
import csv
import io
import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import srr.generalization.statistics as generalization
from srr.generalization.baselines import (
    classification_error,
    frobenius_product,
    frobenius_sum,
    inverse_margin,
    output_margins,
    path_norm,
    perturbation_sigma,
    sharpness,
    spectral_product,
    spectral_sum,
    weight_matrices,
)
from srr.generalization.statistics import (
    GranulatedKendall,
    compare_measures,
    comparison_rows,
    granulated_psi,
    kendall_tau,
    to_csv,
    to_rich_table,
)

scipy_stats = pytest.importorskip("scipy.stats")

paired_ints = st.integers(2, 30).flatmap(
    lambda n: st.tuples(st.lists(st.integers(0, 4), min_size=n, max_size=n),
                        st.lists(st.integers(0, 4), min_size=n, max_size=n))
)


def brute_force_tau_a(x, y):
    n = len(x)
    s = sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i in range(n) for j in range(i + 1, n))
    return s / (n * (n - 1) / 2)


def same_float(a, b, tol=1e-12):
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol


# --------------------------------------------------------------------------- Kendall τ

@given(paired_ints)
def test_tau_b_equals_scipy_kendalltau_with_ties(pair):
    x, y = pair
    assert same_float(kendall_tau(x, y), float(scipy_stats.kendalltau(x, y).statistic))


@given(paired_ints)
def test_tau_a_equals_brute_force_pair_count(pair):
    x, y = pair
    assert same_float(kendall_tau(x, y, ties="a"), brute_force_tau_a(x, y))


@given(paired_ints)
def test_tau_is_symmetric_and_flips_sign_with_the_ranking(pair):
    x, y = pair
    for ties in ("a", "b"):
        assert same_float(kendall_tau(x, y, ties=ties), kendall_tau(y, x, ties=ties))
        assert same_float(kendall_tau(x, [-v for v in y], ties=ties), -kendall_tau(x, y, ties=ties))


def test_tau_is_plus_one_for_concordant_and_minus_one_for_discordant_rankings():
    x = np.array([0.3, -1.0, 2.5, 7.0, 1.1])
    for ties in ("a", "b"):
        assert kendall_tau(x, np.exp(x), ties=ties) == 1.0
        assert kendall_tau(x, -(x**3), ties=ties) == -1.0


def test_tau_on_a_hand_computed_example_with_ties():
    # pairs: (0,1) (0,2) (0,3) concordant; (1,3) discordant; (1,2) tied in x; (2,3) tied in y.
    x, y = [1, 2, 2, 3], [1, 3, 2, 2]
    assert kendall_tau(x, y) == pytest.approx(2 / math.sqrt((6 - 1) * (6 - 1)))  # 0.4
    assert kendall_tau(x, y, ties="a") == pytest.approx(2 / 6)


def test_tau_ranks_infinities_and_accepts_tensors():
    assert kendall_tau(torch.tensor([-math.inf, 0.0, math.inf]), [1, 2, 3]) == 1.0


def test_tau_is_nan_when_undefined():
    assert math.isnan(kendall_tau([1.0], [2.0]))
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    assert kendall_tau([1, 1, 1], [1, 2, 3], ties="a") == 0.0


def test_tau_pair_blocks_do_not_change_the_answer(monkeypatch):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 7, 200), rng.integers(0, 7, 200)
    monkeypatch.setattr(generalization, "_PAIR_BLOCK", 450)  # two rows of pairs per block
    assert kendall_tau(x, y) == pytest.approx(float(scipy_stats.kendalltau(x, y).statistic), abs=1e-12)


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "error", "match"),
    [
        ([1, 2], [1, 2, 3], {}, ValueError, "same length"),
        ([1, float("nan")], [1, 2], {}, ValueError, "NaN"),
        ([[1, 2]], [[1, 2]], {}, ValueError, "1-D"),
        ([1, 2], [1, 2], {"ties": "c"}, ValueError, "ties"),
    ],
)
def test_tau_rejects_bad_input_with_named_errors(x, y, kwargs, error, match):
    with pytest.raises(error, match=match):
        kendall_tau(x, y, **kwargs)


# --------------------------------------------------------------------------- granulated Ψ

def grid_table():
    """2×2×2 grid: the measure follows the gap when A or C varies and reverses it when B varies."""
    return [
        {"A": a, "B": b, "C": c, "gap": 4 * a + 2 * b + c, "mu": 4 * a - 2 * b + c}
        for a, b, c in itertools.product((0, 1), repeat=3)
    ]


def test_granulated_psi_on_a_grid_with_a_known_answer():
    result = granulated_psi(grid_table(), "mu", hyperparameters=["A", "B", "C"])
    assert result.psi == {"A": 1.0, "B": -1.0, "C": 1.0}
    assert result.Psi == pytest.approx(1 / 3)
    # measure in gap order: [0, 1, -2, -1, 4, 5, 2, 3] has 8 inversions among 28 pairs.
    assert result.tau == pytest.approx((20 - 8) / 28)
    assert result.groups == {"A": 4, "B": 4, "C": 4}
    assert result.skipped == {"A": 0, "B": 0, "C": 0}
    assert result.n_models == 8 and result.measure == "mu"


def test_granulated_psi_skips_groups_where_the_hyperparameter_cannot_vary():
    table = [row for row in grid_table() if (row["A"], row["B"], row["C"]) != (1, 1, 1)]
    result = granulated_psi(table, "mu", hyperparameters=["A", "B", "C"])
    assert result.psi == {"A": 1.0, "B": -1.0, "C": 1.0}
    assert result.groups == {"A": 3, "B": 3, "C": 3}
    assert result.skipped == {"A": 1, "B": 1, "C": 1}


def test_granulated_psi_skips_groups_with_undefined_tau_and_reports_nan_psi():
    # ties when only C varies at A=0
    table = [dict(row, mu=0.0 if row["A"] == 0 else row["mu"]) for row in grid_table()]
    result = granulated_psi(table, "mu", hyperparameters=["A", "B", "C"])
    assert result.groups["C"] == 2 and result.skipped["C"] == 2
    flat = [dict(row, mu=1.0) for row in grid_table()]
    result = granulated_psi(flat, "mu", hyperparameters=["A", "B", "C"])
    assert all(math.isnan(v) for v in result.psi.values()) and math.isnan(result.Psi)
    assert result.groups == {"A": 0, "B": 0, "C": 0}


grid_values = st.lists(st.integers(0, 3), min_size=12, max_size=12)


@given(grid_values, grid_values)
def test_psi_depends_only_on_ranks_and_flips_with_the_measure(measure, gap):
    table = [
        {"lr": lr, "width": w, "dropout": p, "gap": g, "mu": m}
        for (lr, w, p), g, m in zip(itertools.product((1e-3, 1e-4, 1e-5), (384, 768), (0.0, 0.1)), gap, measure)
    ]
    base = granulated_psi(table, "mu", hyperparameters=["lr", "width", "dropout"])
    monotone = granulated_psi([dict(r, mu=math.exp(r["mu"])) for r in table], "mu",
                              hyperparameters=["lr", "width", "dropout"])
    negated = granulated_psi([dict(r, mu=-r["mu"]) for r in table], "mu", hyperparameters=["lr", "width", "dropout"])
    for h in base.psi:
        assert same_float(monotone.psi[h], base.psi[h])
        assert same_float(negated.psi[h], -base.psi[h])
    assert same_float(negated.tau, -base.tau)


def test_granulated_psi_reads_tensor_cells_by_value():
    table = [{k: torch.tensor(v) for k, v in row.items()} for row in grid_table()]
    result = granulated_psi(table, "mu", hyperparameters=["A", "B", "C"])
    assert result.psi == {"A": 1.0, "B": -1.0, "C": 1.0} and result.groups == {"A": 4, "B": 4, "C": 4}


def test_a_measure_equal_to_the_gap_scores_one_everywhere():
    table = [dict(row, mu=row["gap"]) for row in grid_table()]
    result = granulated_psi(table, "mu", hyperparameters=["A", "B", "C"])
    assert result.tau == 1.0 and result.Psi == 1.0


@pytest.mark.parametrize(
    ("table", "kwargs", "error", "match"),
    [
        ([{"A": 0, "gap": 1.0}], {"hyperparameters": ["A"]}, ValueError, "'mu' is missing from table row 0"),
        ([{"A": 0, "B": 0, "gap": 1, "mu": 1}, {"A": 1, "B": 0, "gap": 2, "mu": 2}], {"hyperparameters": ["A", "B"]},
         ValueError, "'B' must take at least 2 values"),
        ([{"A": 0, "gap": 1, "mu": float("nan")}], {"hyperparameters": ["A"]}, ValueError, "NaN in table row 0"),
        ([{"A": 0, "gap": 1, "mu": 1}], {"hyperparameters": "A"}, TypeError, "hyperparameters"),
        ([{"A": 0, "gap": 1, "mu": 1}], {"hyperparameters": []}, ValueError, "hyperparameters"),
    ],
)
def test_granulated_psi_rejects_bad_tables_with_named_errors(table, kwargs, error, match):
    with pytest.raises(error, match=match):
        granulated_psi(table, "mu", **kwargs)


def test_compare_measures_rows_rich_table_and_csv_agree():
    table = [dict(row, neg=-row["mu"]) for row in grid_table()]
    results = compare_measures(table, ["mu", "neg"], hyperparameters=["A", "B", "C"])
    assert all(isinstance(r, GranulatedKendall) for r in results)
    header, rows = comparison_rows(results)
    assert header == ["measure", "tau", "psi[A]", "psi[B]", "psi[C]", "Psi"]
    assert rows[0][0] == "mu" and rows[1][2:] == [-1.0, 1.0, -1.0, pytest.approx(-1 / 3)]
    assert results[0].row() == dict(zip(header, rows[0]))

    parsed = list(csv.reader(io.StringIO(to_csv(results))))
    assert parsed[0] == header
    assert [float(v) for v in parsed[2][1:]] == pytest.approx(rows[1][1:])

    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(to_rich_table(results, title="HU24 §5"))
    text = console.export_text()
    assert "ψ[A]" in text and "Ψ" in text and "neg" in text and "-0.333" in text


# --------------------------------------------------------------------------- norm measures

def hand_mlp():
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))  # ‖·‖_F² = 30, σ_max² = 15 + √221
        model[2].weight.copy_(torch.tensor([[3.0, 4.0]]))  # ‖·‖_F² = ‖·‖_2² = 25
        model[0].bias.fill_(7.0)  # biases (ndim < 2) are not weight matrices
    return model


def test_norm_measures_match_hand_computation():
    model = hand_mlp()
    spec1 = 15 + math.sqrt(221)
    assert frobenius_product(model) == pytest.approx(math.log(30 * 25))
    assert frobenius_sum(model) == pytest.approx(math.log(2) + math.log(30 * 25) / 2)
    assert frobenius_sum(model, rebalanced=False) == pytest.approx(55.0)
    assert spectral_product(model) == pytest.approx(math.log(spec1 * 25))
    assert spectral_sum(model) == pytest.approx(math.log(2) + math.log(spec1 * 25) / 2)
    assert spectral_sum(model, rebalanced=False) == pytest.approx(spec1 + 25)


def test_conv_kernels_are_reshaped_and_vectors_skipped():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.GroupNorm(1, 3), nn.Flatten(), nn.LayerNorm(12), nn.Linear(12, 4))
    names = [name for name, _ in weight_matrices(model)]
    assert names == ["0.weight", "4.weight"]
    kernel = model[0].weight.detach().double().reshape(3, -1).numpy()
    dense = model[4].weight.detach().double().numpy()
    expected = 2 * math.log(np.linalg.norm(kernel, 2)) + 2 * math.log(np.linalg.norm(dense, 2))
    assert spectral_product(model) == pytest.approx(expected)
    assert frobenius_product(model) == pytest.approx(math.log((kernel**2).sum() * (dense**2).sum()))


@given(st.floats(0.1, 10.0).filter(lambda c: abs(c - 1) > 0.05))
def test_rebalanced_sums_and_products_ignore_relu_rescaling(c):
    model, rescaled = hand_mlp().double(), hand_mlp().double()
    with torch.no_grad():
        rescaled[0].weight.mul_(c)
        rescaled[2].weight.div_(c)
    for measure in (frobenius_product, frobenius_sum, spectral_product, spectral_sum):
        assert measure(rescaled) == pytest.approx(measure(model), abs=1e-9)
    for measure in (frobenius_sum, spectral_sum):
        assert measure(rescaled, rebalanced=False) != pytest.approx(measure(model, rebalanced=False))


def test_norm_measures_need_a_weight_matrix():
    with pytest.raises(ValueError, match="at least one weight matrix"):
        frobenius_product(nn.LayerNorm(4))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        spectral_sum(torch.ones(2, 2))


# --------------------------------------------------------------------------- path-norm

@given(st.integers(0, 2**16), st.booleans())
def test_path_norm_is_the_sum_over_paths_of_squared_weight_products(seed, bias):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4, bias=bias), nn.ReLU(), nn.Linear(4, 2, bias=bias)).double()
    W1, W2 = model[0].weight.detach(), model[2].weight.detach()
    expected = sum(W2[k, j] ** 2 * W1[j, i] ** 2 for k in range(2) for j in range(4) for i in range(3))
    if bias:
        b1, b2 = model[0].bias.detach(), model[2].bias.detach()
        expected += sum(W2[k, j] ** 2 * b1[j] ** 2 for k in range(2) for j in range(4)) + (b2**2).sum()
    assert path_norm(model, (3,)) == pytest.approx(float(expected), rel=1e-12)


def test_path_norm_leaves_the_model_untouched():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4, 2)).train()
    model[2].eval()
    before = copy.deepcopy(model.state_dict())
    path_norm(model, torch.Size([3]))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == [True, True, True, False, True]


# --------------------------------------------------------------------------- margin

def test_output_margins_on_hand_made_logits():
    logits = torch.tensor([[2.0, 1.0, 0.5], [2.0, 1.0, 0.5]])
    assert output_margins(logits, torch.tensor([0, 2])).tolist() == [1.0, -1.5]


def test_inverse_margin_uses_the_tenth_percentile_of_margins():
    margins = torch.tensor([7.0, 3.0, 10.0, 1.0, 5.0, 2.0, 9.0, 4.0, 8.0, 6.0])
    targets = torch.arange(10) % 3
    logits = torch.zeros(10, 3)
    logits[torch.arange(10), targets] = margins  # other logits are 0, so the margin is the true logit
    expected = 1 / np.percentile(margins.numpy(), 10) ** 2  # γ = 1.9
    assert inverse_margin(nn.Identity(), (logits, targets)) == pytest.approx(expected)
    batches = [(logits[:4], targets[:4]), (logits[4:], targets[4:])]
    assert inverse_margin(nn.Identity(), batches) == pytest.approx(expected)
    assert inverse_margin(nn.Identity(), (logits, targets), percentile=50) == pytest.approx(1 / 5.5**2)


def test_inverse_margin_is_infinite_when_the_percentile_margin_is_not_positive():
    logits = torch.tensor([[0.0, 1.0]] * 5)
    assert inverse_margin(nn.Identity(), (logits, torch.zeros(5, dtype=torch.long))) == math.inf


def test_inverse_margin_rejects_a_one_shot_iterator():
    batches = iter([(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))])
    with pytest.raises(TypeError, match="re-iterable"):
        inverse_margin(nn.Identity(), batches)


# --------------------------------------------------------------------------- sharpness

FAST = dict(num_samples=2, search_steps=10, sigma_range=(1e-4, 10.0))  # keeps each search to ~24 forwards


def toy_regression(c: float = 1.0):
    """A ReLU net fitting its own outputs (zero loss); ``c`` moves scale between the layers."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    x = torch.randn(32, 4)
    with torch.no_grad():
        y = model.eval()(x)
        model[0].weight.mul_(c)
        model[0].bias.mul_(c)
        model[3].weight.div_(c)
    return model.train(), (x, y)


def test_sharpness_restores_parameters_and_modes():
    model, data = toy_regression()
    model[2].eval()
    before = copy.deepcopy(model.state_dict())
    modes = [m.training for m in model.modules()]
    value = sharpness(model, nn.functional.mse_loss, data, threshold=0.05, **FAST)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [m.training for m in model.modules()] == modes
    assert math.isfinite(value) and value > 0
    assert sharpness(model, nn.functional.mse_loss, data, threshold=0.05, **FAST) == value  # fixed seeds


def test_sharpness_is_larger_for_the_sharper_of_two_equivalent_nets():
    # Same function, but the rescaled net's second layer multiplies noise by c·|layer-1 output|.
    flat, data = toy_regression(1.0)
    sharp, _ = toy_regression(5.0)
    assert torch.allclose(sharp.eval()(data[0]), data[1], atol=1e-5)
    iso = dict(noise="isotropic", threshold=0.05, **FAST)
    mse = nn.functional.mse_loss
    assert sharpness(sharp, mse, data, **iso) > 2 * sharpness(flat, mse, data, **iso)


def test_magnitude_noise_is_invariant_to_relu_rescaling():
    flat, data = toy_regression(1.0)
    sharp, _ = toy_regression(5.0)
    kwargs = dict(noise="magnitude", magnitude_eps=0.0, threshold=0.05, **FAST)
    assert sharpness(sharp, nn.functional.mse_loss, data, **kwargs) == pytest.approx(
        sharpness(flat, nn.functional.mse_loss, data, **kwargs), rel=1e-3
    )


def test_perturbation_sigma_meets_the_threshold_and_is_clipped_to_its_range():
    model, data = toy_regression()
    sigma = perturbation_sigma(model, nn.functional.mse_loss, data, threshold=0.05, noise="isotropic", **FAST)
    assert 1e-4 < sigma < 10.0
    assert perturbation_sigma(model, nn.functional.mse_loss, data, threshold=1e9, noise="isotropic") == 10.0
    x = torch.randn(16, 4)
    labels = model.eval()(x).argmax(dim=1)
    assert perturbation_sigma(model, classification_error, (x, labels), threshold=1.0, sigma_range=(1e-3, 2.0)) == 2.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"threshold": 0.0}, "threshold"),
        ({"noise": "uniform"}, "noise"),
        ({"num_samples": 0}, "num_samples"),
        ({"sigma_range": (1.0, 0.5)}, "sigma_range"),
    ],
)
def test_sharpness_rejects_bad_arguments(kwargs, match):
    model, data = toy_regression()
    with pytest.raises(ValueError, match=match):
        sharpness(model, nn.functional.mse_loss, data, **kwargs)
