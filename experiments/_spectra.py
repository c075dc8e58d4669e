"""Eigenvalues that re-score the rates at any ε without retraining (issue 22 §2; MATH.md §1–2).

For a token set ``Z (N, d)`` with eigenvalues ``λ_i`` of its Gram matrix (``ZZᵀ`` or ``ZᵀZ``: the non-zero
eigenvalues agree, Sylvester), (E1) is exactly

    R(Z; ε) = ½ Σ_i log(1 + α λ_i),     α = d / (N ε²),

and (E2), with ``λ_{k,i}`` the eigenvalues of head k's ``A_kᵀA_k`` (or ``A_k A_kᵀ``), ``A_k = Z U_k``,

    R^c(Z; U, ε) = Σ_k ½ Σ_i log(1 + β λ_{k,i}),     β = p / (N ε²).

``ε`` is ε, never ε² (the library's convention). A file written by :func:`save_spectra` holds, per layer ℓ and
measured image, the ``min(N, d)`` eigenvalues of the output tokens' Gram (``R_eig_ℓ``, shape ``(n, m)``), the
``min(N, p)`` eigenvalues of each head (``Rc_eig_ℓ``, ``(n, K, m)``) and ‖Z‖₀ (``l0_ℓ``, ``(n,)``), with ``N``,
``d``, ``p``, ``K``: :func:`rescore` gives R, R^c and μ_SRR averaged over the images at any ε and λ.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def gram_eigenvalues(X: Tensor) -> Tensor:
    """Eigenvalues ``(..., min(N, d))`` of the Gram of ``X (..., N, d)``, ascending, in float64, clamped at 0."""
    X = X.double()
    N, d = X.shape[-2:]
    G = X @ X.transpose(-2, -1) if N <= d else X.transpose(-2, -1) @ X
    return torch.linalg.eigvalsh(G).clamp_min(0.0)


def token_spectra(Z: Tensor, U: Tensor) -> dict[str, Tensor]:
    """``Z (n, N, d)``, ``U (K, d, p)``: ``R_eig (n, min(N, d))``, ``Rc_eig (n, K, min(N, p))``, ``l0 (n,)``."""
    Z = Z.double()
    A = torch.einsum("bnd,kdp->bknp", Z, U.double())  # (n, K, N, p)
    return {"R_eig": gram_eigenvalues(Z), "Rc_eig": gram_eigenvalues(A), "l0": (Z != 0).sum((-2, -1)).double()}


def rates_from_spectra(R_eig, Rc_eig, *, N: int, d: int, p: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """Per token set: ``(R, R^c)`` at ε from the stored eigenvalues (E1, E2; float64)."""
    R_eig, Rc_eig = np.asarray(R_eig, dtype=np.float64), np.asarray(Rc_eig, dtype=np.float64)
    alpha, beta = d / (N * eps**2), p / (N * eps**2)
    R = 0.5 * np.log1p(alpha * R_eig).sum(-1)
    Rc = 0.5 * np.log1p(beta * Rc_eig).sum((-2, -1))
    return R, Rc


@torch.no_grad()
def model_spectra(net, images: Tensor, *, batch_size: int = 256) -> list[dict[str, Tensor]]:
    """Every layer's output spectra (:func:`token_spectra` with the layer's own U^ℓ) on ``images``, eval mode."""
    was = net.training
    net.eval()
    parts: list[list[dict]] = []
    for xb in images.split(batch_size):
        _, layers = net.forward_layer_tokens(xb)
        for ell, (t, block) in enumerate(zip(layers, net.blocks())):
            if len(parts) <= ell:
                parts.append([])
            parts[ell].append(token_spectra(t.output, block.subspaces.detach()))
    net.train(was)
    return [{k: torch.cat([b[k] for b in layer]) for k in layer[0]} for layer in parts]


def save_spectra(path: Path, layers: list[dict[str, Tensor]], *, N: int, d: int, p: int,
                 dtype=np.float32) -> Path:
    """One compressed ``.npz`` per model: the spectra of :func:`model_spectra` (``dtype``: storage precision)."""
    arrays = {"N": np.int64(N), "d": np.int64(d), "p": np.int64(p), "K": np.int64(layers[0]["Rc_eig"].shape[-2]),
              "layers": np.int64(len(layers))}
    for ell, layer in enumerate(layers):
        arrays[f"R_eig_{ell}"] = layer["R_eig"].cpu().numpy().astype(dtype)
        arrays[f"Rc_eig_{ell}"] = layer["Rc_eig"].cpu().numpy().astype(dtype)
        arrays[f"l0_{ell}"] = layer["l0"].cpu().numpy().astype(np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)  # atomic: a killed run leaves no half-written file
    return path


def load_spectra(path: Path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def rescore(spectra: dict, eps: float, *, lam: float = 0.1) -> dict:
    """Per layer and averaged over layers (HU24 eq. 11): mean R, R^c, λ‖Z‖₀ and μ_SRR = λ‖Z‖₀ + R^c − R at ε."""
    N, d, p = int(spectra["N"]), int(spectra["d"]), int(spectra["p"])
    per_layer = []
    for ell in range(int(spectra["layers"])):
        R, Rc = rates_from_spectra(spectra[f"R_eig_{ell}"], spectra[f"Rc_eig_{ell}"], N=N, d=d, p=p, eps=eps)
        l0 = float(np.mean(spectra[f"l0_{ell}"]))
        per_layer.append({"R": float(R.mean()), "Rc": float(Rc.mean()), "l0": l0})
    L = len(per_layer)
    mean = {k: sum(r[k] for r in per_layer) / L for k in ("R", "Rc", "l0")}
    return {"layers": per_layer, "R": mean["R"], "Rc": mean["Rc"], "l0_term": lam * mean["l0"],
            "rate_term": mean["Rc"] - mean["R"], "srr": lam * mean["l0"] + mean["Rc"] - mean["R"]}
