"""Issue 22's harness: eigenvalue re-scoring at any ε, the resumable grid, τ(ε), the recipe-scale regulariser
arms and the tied ToST model (experiments/_spectra.py, generalization.py, tau_eps.py, regularization_recipe.py)."""
import json
import math
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import srr
from experiments import _cifar, generalization, regularization_recipe, tau_eps
from experiments._common import read_csv
from experiments._spectra import (gram_eigenvalues, load_spectra, model_spectra, rates_from_spectra, rescore,
                                  save_spectra, token_spectra)

CIFAR = pytest.mark.skipif(not _cifar.DEFAULT_DATA_DIR.is_dir() and not os.environ.get("SRR_DATA_DIR"),
                           reason="the CIFAR-10 experiments need ../shared/data/cifar10 or $SRR_DATA_DIR")


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the experiments' --threads default sets 1


# ----------------------------------------------------------------------------- re-scoring from eigenvalues

@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3), N=st.integers(2, 12), K=st.integers(1, 3), p=st.integers(1, 6),
       sparse=st.booleans(), seed=st.integers(0, 2**16), scale=st.sampled_from([1e-2, 1.0, 30.0]))
def test_rescoring_from_eigenvalues_is_exact_at_three_eps(n, N, K, p, sparse, seed, scale):
    """R(ε) = ½ Σ log(1 + α λ_i), α = d/(Nε²), and R^c with β = p/(Nε²), from the stored eigenvalues, equal
    srr.coding_rate and srr.compressed_coding_rate (float64) at ε = 0.05, 0.7 and 20, with N < d and N > d."""
    g = torch.Generator().manual_seed(seed)
    d = K * p + int(seed % 3)  # K·p need not be d
    Z = scale * torch.randn(n, N, d, generator=g, dtype=torch.float64)
    if sparse:
        Z = torch.relu(Z)  # ISTA-like zeros, rank deficiency
    U = torch.randn(K, d, p, generator=g, dtype=torch.float64)
    spectra = token_spectra(Z, U)
    assert spectra["R_eig"].shape == (n, min(N, d)) and spectra["Rc_eig"].shape == (n, K, min(N, p))
    for eps in (0.05, 0.7, 20.0):
        R, Rc = rates_from_spectra(spectra["R_eig"], spectra["Rc_eig"], N=N, d=d, p=p, eps=eps)
        np.testing.assert_allclose(R, srr.coding_rate(Z, eps).numpy(), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(Rc, srr.compressed_coding_rate(Z, U, eps).numpy(), rtol=1e-9, atol=1e-9)


def test_rescoring_uses_eps_not_eps_squared():
    """A wrong convention (ε² passed as ε) would change the value: the check can fail."""
    Z = torch.randn(1, 9, 5, dtype=torch.float64)
    s = token_spectra(Z, torch.eye(5, dtype=torch.float64).reshape(1, 5, 5))
    R, _ = rates_from_spectra(s["R_eig"], s["Rc_eig"], N=9, d=5, p=5, eps=0.3)
    assert abs(R[0] - float(srr.coding_rate(Z, 0.3))) < 1e-10
    assert abs(R[0] - float(srr.coding_rate(Z, 0.09))) > 1e-3


def test_gram_eigenvalues_are_those_of_either_gram():
    X = torch.randn(4, 7, dtype=torch.float64)
    small = gram_eigenvalues(X)
    big = torch.linalg.eigvalsh(X.T @ X)
    np.testing.assert_allclose(small.numpy(), big[-4:].numpy(), atol=1e-10)


def test_saved_spectra_rescore_a_model_like_layer_stats(tmp_path):
    """The file round trip: μ_SRR re-scored from the .npz (float64 storage) equals experiments/_cifar.py's
    per-layer measurement at its three ε, layer by layer (λ = 0.1)."""
    torch.manual_seed(0)
    net = _cifar.model("crate", width=16, depth=2, heads=4, patch_size=8).double()
    images = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    layers = _cifar.layer_stats(net, images)
    cfg = net.config
    path = save_spectra(tmp_path / "m.npz", model_spectra(net, images), N=cfg.num_patches + 1, d=cfg.dim,
                        p=cfg.head_dim, dtype=np.float64)
    spectra = load_spectra(path)
    for tag, eps in _cifar.eps_values(cfg.head_dim, cfg.num_patches + 1).items():
        scored = rescore(spectra, eps)
        for ell, row in enumerate(layers):
            assert scored["layers"][ell]["R"] == pytest.approx(row[f"R[{tag}]"], rel=1e-10)
            assert scored["layers"][ell]["Rc"] == pytest.approx(row[f"Rc[{tag}]"], rel=1e-10)
        assert scored["srr"] == pytest.approx(_cifar.model_srr(layers, eps=tag), rel=1e-10)


# ----------------------------------------------------------------------------- the grid across sessions

def _row(seed, model_id, gap, eig=""):
    return {"model_id": model_id, "seed": seed, "width": int(model_id[1:].split("-")[0]), "gap": gap,
            "eig_file": eig}


def test_merge_keeps_base_rows_and_adds_the_retrained_eigenvalues():
    base = [_row(0, "w64-a", 1.0), _row(0, "w64-b", 2.0, eig="eig/s0-w64-b.npz")]
    done = {"s0-w64-a": {**_row(0, "w64-a", 1.5), "eig_file": "eig/s0-w64-a.npz"},
            "s0-w64-b": {**_row(0, "w64-b", 9.0), "eig_file": "eig/other.npz"},
            "s1-w128-a": {**_row(1, "w128-a", 3.0), "eig_file": "eig/s1-w128-a.npz", "eig_gap": 3.0},
            "s0-w128-a": {**_row(0, "w128-a", 4.0), "eig_file": "eig/s0-w128-a.npz", "eig_gap": 4.0}}
    merged = {(m["seed"], m["model_id"]): m for m in generalization.merge(base, done)}
    a = merged[(0, "w64-a")]
    assert a["gap"] == 1.0 and a["eig_gap"] == 1.5 and a["eig_retrained"] is True and a["eig_file"].endswith("a.npz")
    b = merged[(0, "w64-b")]
    assert b["gap"] == 2.0 and b["eig_file"] == "eig/s0-w64-b.npz" and "eig_retrained" not in b
    assert merged[(1, "w128-a")]["gap"] == 3.0
    order = [(m["width"], m["seed"]) for m in generalization.merge(base, done)]
    assert order == sorted(order)


@CIFAR
@pytest.mark.slow
def test_grid_skips_finished_models_and_retrains_a_lost_one(tmp_path):
    out = tmp_path / "g"
    first = generalization.main(["--quick", "--out", str(out)])
    assert first["n_models"] == 4 and first["with_eigenvalues"] == 4
    models = read_csv(out / "models.csv")
    assert {"width", "seed", "eig_file"} <= set(models[0])
    lost = out / "rows" / f"s0-{models[1]['model_id']}.json"
    lost.unlink()
    again = generalization.main(["--quick", "--out", str(out)])
    assert [r["models_trained"] for r in again["training_runs"]] == [4, 1]
    again_models = read_csv(out / "models.csv")
    for key in ("model_id", "seed", "gap", "srr", "srr_eps1", "eig_file"):  # the same model, retrained
        assert [m[key] for m in again_models] == [m[key] for m in models], key
    third = generalization.main(["--quick", "--out", str(out)])
    assert len(third["training_runs"]) == 2  # nothing trained
    for m in models:  # every row's μ_SRR re-scored from its eigenvalue file
        spectra = load_spectra(out / m["eig_file"])
        assert rescore(spectra, 0.1)["srr"] == pytest.approx(m["srr"], rel=1e-5)
        assert rescore(spectra, 1.0)["srr"] == pytest.approx(m["srr_eps1"], rel=1e-5)
    # tau(eps) on this grid: >= 25 log points per measure, the re-scoring check, the figure
    payload = tau_eps.main(["--models", str(out / "models.csv")])
    rows = read_csv(out / "tau_eps.csv")
    for measure in tau_eps.MEASURES:
        eps = [r["eps"] for r in rows if r["measure"] == measure and r["models"] == "seed 0"]
        assert len(eps) >= 25 and min(eps) == pytest.approx(1e-2) and max(eps) == pytest.approx(1e2)
    assert payload["rescore_check_max_rel_diff"] < 1e-5 and payload["rescore_checks"] == 12
    assert (out / "tau_eps.png").stat().st_size > 0


def test_tau_eps_ranks_a_planted_measure(tmp_path):
    """τ(ε) from stored eigenvalues: gaps planted equal to μ_SRR at ε = 1 give τ = 1 there, and the ceiling
    is τ between two seeds' gaps."""
    rng = np.random.default_rng(0)
    N, d, p, K = 5, 8, 2, 4
    rows = []
    (tmp_path / "eig").mkdir()
    models = [(torch.from_numpy(rng.normal(size=(3, N, d)) * rng.uniform(0.1, 10)),
               torch.from_numpy(rng.normal(size=(K, d, p)))) for _ in range(6)]
    for seed in (0, 1):  # the same six models under two seeds, the second seed's gaps reversed
        for i, (Z, U) in enumerate(models):
            s = token_spectra(Z, U)
            name = f"eig/s{seed}-w8-m{i}.npz"
            save_spectra(tmp_path / name, [s], N=N, d=d, p=p, dtype=np.float64)
            gap = rescore(load_spectra(tmp_path / name), 1.0)["srr"]
            rows.append({"model_id": f"w8-m{i}", "seed": seed, "width": d, "gap": gap if seed == 0 else -gap,
                         "eig_gap": gap if seed == 0 else -gap, "eig_file": name, "eig_retrained": True})
    from experiments._common import write_csv

    write_csv(tmp_path / "models.csv", rows)
    payload = tau_eps.main(["--models", str(tmp_path / "models.csv"), "--points", "25"])
    peak = next(r for r in payload["peaks"] if r["models"] == "seed 0" and r["measure"] == "srr")
    assert peak["tau_eps1"] == pytest.approx(1.0) and peak["peak_tau"] == pytest.approx(1.0)
    seed1 = next(r for r in payload["peaks"] if r["models"] == "seed 1" and r["measure"] == "srr")
    assert seed1["tau_eps1"] == pytest.approx(-1.0)
    assert math.isclose(tau_eps.noise_ceilings(rows)[d], -1.0)


# ----------------------------------------------------------------------------- §3 and §4

def test_hook_free_ratio_equals_the_regulariser_used_in_training():
    """The ratio per unit η computed without hooks equals the one through SRRRegularizer (HU24's form: last
    layer, detached input), so it can be measured while a run's own regulariser is attached."""
    import torch.nn.functional as F

    from srr.measurement import SRRRegularizer

    torch.manual_seed(0)
    net = _cifar.model("crate", width=16, depth=2, heads=4, patch_size=8)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    got = regularization_recipe.last_layer_ratios(net, x, y, label_smoothing=0.1, batch_size=4,
                                                  eps_values=(0.1, 1.0))
    params = list(net.blocks()[-1].parameters())
    for eps in (0.1, 1.0):
        reg = SRRRegularizer(net, layers=-1, weight=1.0, eps=eps, lam=0.1, subspaces="model", detach_input=True)
        gce = [torch.zeros_like(p) for p in params]
        greg = [torch.zeros_like(p) for p in params]
        for xb, yb in zip(x.split(4), y.split(4)):
            ce = F.cross_entropy(net(xb), yb, label_smoothing=0.1)
            value = reg()
            for acc, g in zip(gce, torch.autograd.grad(ce, params, retain_graph=True, allow_unused=True)):
                acc += 0 if g is None else g
            for acc, g in zip(greg, torch.autograd.grad(value, params, allow_unused=True)):
                acc += 0 if g is None else g
        reg.close()
        ratio = math.sqrt(sum(float((g**2).sum()) for g in greg)) / math.sqrt(sum(float((g**2).sum()) for g in gce))
        assert got[f"ratio_per_eta[{eps:g}]"] == pytest.approx(ratio, rel=1e-5)


def test_tied_tost_model_is_the_gradient_step_scaled_to_minus_o_w():
    from srr.models import create_model
    from srr.rates import rate_scale

    name = regularization_recipe.register_tost_tied("crate_nano")
    assert regularization_recipe.register_tost_tied("crate_nano") == name  # idempotent
    net = create_model(name, image_size=32, in_chans=3)
    plain = create_model("crate_nano", variant="tost", image_size=32, in_chans=3)
    N = net.config.num_patches + 1
    for block in net.blocks():
        c = block.compression
        assert c.output == "tied" and not hasattr(c, "to_out")
        assert c.step_size * rate_scale(c.head_dim, N, c.eps) == pytest.approx(1.0)
    assert not [k for k in net.state_dict() if "to_out" in k] and [k for k in plain.state_dict() if "to_out" in k]
    c = net.blocks()[0].compression.double()
    x = torch.randn(2, N, c.dim, dtype=torch.float64)
    Pi = c.membership(x)
    a = c.qkv(x).unflatten(-1, (c.heads, c.head_dim))
    m = torch.einsum("nik,nikp->nkp", Pi, a**2) / Pi.sum(-2).unsqueeze(-1)
    o = (Pi.unsqueeze(-1) * a / (1 + c.gain_scale * m).unsqueeze(-3)).flatten(-2)
    torch.testing.assert_close(c(x), -o @ c.qkv.weight)  # ToST's to_out replaced by W
    torch.testing.assert_close(c(x), c.reference(x))  # = −κ∇R^c_var with Π held fixed (derived)


@CIFAR
@pytest.mark.slow
def test_recipe_arms_calibrate_resume_and_skip(tmp_path):
    out = tmp_path / "r"
    payload = regularization_recipe.main(["--quick", "--out", str(out)])
    cal = payload["calibration"]
    runs = {r["arm"]: r for r in read_csv(out / "runs.csv")}
    assert set(runs) == {"ce", "hu24", "eps1"}
    for r in runs.values():  # the replicated initial model is the trainer's, for every paired arm
        assert r["param_checksum_init"] == pytest.approx(cal["param_checksum"], rel=1e-12)
    assert runs["eps1"]["eta"] == pytest.approx(cal["eta_eps1"])
    assert runs["eps1"]["grad_ratio_init"] == pytest.approx(runs["hu24"]["grad_ratio_init"], rel=1e-6)
    assert runs["ce"]["grad_ratio_init"] == 0
    for column in ("seed", "arm", "eta", "srr_eps", "epochs", "test_accuracy", "grad_ratio_init", "grad_ratio_end"):
        assert column in runs["ce"]
    epochs = read_csv(out / "epochs" / "s0-hu24.csv")
    assert [e["epoch"] for e in epochs] == [0, 1] and "L0_Rc_yu23_in" in epochs[0] and "L0_Rc[1]" in epochs[0]
    # a finished run is skipped; one whose row is lost is resumed from its checkpoint, not retrained
    (out / "rows" / "s0-eps1.json").unlink()
    again = regularization_recipe.main(["--quick", "--out", str(out)])
    assert again["runs_trained_this_invocation"] == 1
    rerun = {r["arm"]: r for r in read_csv(out / "runs.csv")}["eps1"]
    assert rerun["resumed"] is True and rerun["test_accuracy"] == runs["eps1"]["test_accuracy"]
    assert json.loads((out / "summary.json").read_text())["invocations"][-1]["runs_trained"] == 1


def test_statistics_of_a_grid_in_progress():
    """One width with two seeds, another with one seed so far (the d = 128 grid half trained): τ per width and
    seed, 'both seeds' only where there are two, no empty subset (the queue's tabulation crashed on one)."""
    models = []
    for width, seeds in ((64, (0, 1)), (128, (0,))):
        for seed in seeds:
            for i, (variant, lr) in enumerate([(v, lr) for v in ("crate", "crate_n") for lr in (1e-3, 2e-3)]):
                models.append({"model_id": f"w{width}-{variant}-{lr}", "width": width, "seed": seed,
                               "variant": variant, "lr": lr, "gap": float(i), "srr": float(i) * (1 - 2 * seed)})
    stats = {(r["models"], r["measure"]): r["tau"] for r in generalization.statistics(models, ["variant", "lr"])}
    assert stats[("width 64, seed 0", "srr")] == pytest.approx(1.0)
    assert stats[("width 64, seed 1", "srr")] == pytest.approx(-1.0)
    assert stats[("width 128, seed 0", "srr")] == pytest.approx(1.0)
    assert ("width 64, both seeds", "srr") in stats and ("width 128, both seeds", "srr") not in stats
    assert not [k for k in stats if k[0] == "width 128, seed 1"]


@CIFAR
@pytest.mark.slow
def test_tau_eps_quick_mode(tmp_path):
    payload = tau_eps.main(["--quick", "--out", str(tmp_path)])
    assert payload["quick"] is True and payload["models_with_eigenvalues"] >= 2
    for name in ("tau_eps.csv", "rates_eps.csv", "tau_eps_floor.csv", "tau_eps.png", "tau_eps_summary.json"):
        assert (tmp_path / name).stat().st_size > 0, name
