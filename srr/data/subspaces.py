"""``subspaces``: a mixture of low-dimensional subspaces, the data model of the theory.

Class ``k`` is a random ``p``-dimensional subspace of ``R^D`` with orthonormal basis
``U_k`` (``D x p``); a sample is ``U_k @ a + noise * e`` with ``a ~ N(0, I_p)`` and
``e ~ N(0, I_D)``. :func:`make_subspaces` returns tokens as rows for the theory experiments;
:func:`load_subspaces` reshapes them into ``(1, H, W)`` images (``D = H * W``) for image models.
"""
from __future__ import annotations

import math

import torch

from .info import DatasetInfo, check_image_size, check_split
from .tensors import TensorImageDataset

NATIVE_SIZE = 8  # D = 64


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def random_subspaces(
    num_subspaces: int, dim: int, subspace_dim: int, *, generator: torch.Generator, dtype=torch.float32
) -> torch.Tensor:
    """``(K, dim, p)`` orthonormal bases of ``K`` independent uniformly random subspaces."""
    gaussian = torch.randn(num_subspaces, dim, subspace_dim, generator=generator, dtype=torch.float64)
    bases, _ = torch.linalg.qr(gaussian)  # Q of a Gaussian matrix spans a uniform subspace
    return bases.to(dtype)


def sample_subspaces(
    bases: torch.Tensor, n: int, *, noise: float = 0.0, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples ``(X (n, D), labels (n,))`` from the subspaces ``bases`` ``(K, D, p)``.

    Classes are balanced (counts differ by at most one) and in random order.
    """
    num_subspaces, dim, subspace_dim = bases.shape
    labels = (torch.arange(n) % num_subspaces)[torch.randperm(n, generator=generator)]
    coeffs = torch.randn(n, subspace_dim, generator=generator, dtype=bases.dtype)
    samples = torch.einsum("ndp,np->nd", bases[labels], coeffs)  # (n, D)
    if noise > 0:
        samples = samples + noise * torch.randn(n, dim, generator=generator, dtype=bases.dtype)
    return samples, labels


def make_subspaces(
    n: int,
    *,
    dim: int,
    num_subspaces: int,
    subspace_dim: int,
    noise: float = 0.0,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` tokens from a union of ``num_subspaces`` random ``subspace_dim``-dim subspaces of ``R^dim``.

    Randomness comes from ``generator``, or a fresh one seeded with ``seed`` (default 0); give
    at most one. Returns ``(X (n, dim), labels (n,), bases (K, dim, p))``; with ``noise=0``
    every row of ``X`` lies exactly in ``span(bases[label])``.
    """
    sizes = {"n": n, "dim": dim, "num_subspaces": num_subspaces, "subspace_dim": subspace_dim}
    for name, value in sizes.items():
        _positive_int(name, value)
    if subspace_dim > dim:
        raise ValueError(f"subspace_dim must be <= dim={dim}, got {subspace_dim}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    if seed is not None and generator is not None:
        raise ValueError("give seed or generator, not both")
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
    bases = random_subspaces(num_subspaces, dim, subspace_dim, generator=generator, dtype=dtype)
    samples, labels = sample_subspaces(bases, n, noise=noise, generator=generator)
    return samples, labels, bases


def subspaces_info(
    *,
    data_dir=None,
    image_size: int | None = None,
    num_subspaces: int = 10,
    subspace_dim: int = 4,
    noise: float = 0.01,
    num_train: int = 2000,
    num_test: int = 500,
) -> DatasetInfo:
    """Metadata of ``subspaces`` (takes :func:`load_subspaces`' options; only some change it)."""
    check_image_size(image_size)
    size = image_size or NATIVE_SIZE
    # A pixel of U a has variance p / D; dividing by this std gives unit-variance pixels.
    std = math.sqrt(subspace_dim / size**2 + noise**2)
    return DatasetInfo("subspaces", num_subspaces, size, 1, mean=(0.0,), std=(std,))


def load_subspaces(
    split: str,
    *,
    data_dir=None,
    download=False,
    augment=False,
    image_size: int | None = None,
    seed: int = 0,
    num_subspaces: int = 10,
    subspace_dim: int = 4,
    noise: float = 0.01,
    num_train: int = 2000,
    num_test: int = 500,
) -> TensorImageDataset:
    """The ``split`` of a subspace mixture in ``R^(image_size^2)``, as ``(1, H, W)`` images.

    Train and test are drawn from the same subspaces, fixed by ``seed``. The subspaces are
    kept on the dataset as ``.bases`` ``(K, D, p)``. Images are divided by ``info.std`` so that
    pixels have unit variance. ``augment`` is ignored: shifting an image leaves its subspace.
    """
    is_train = check_split(split)
    info = subspaces_info(
        image_size=image_size, num_subspaces=num_subspaces, subspace_dim=subspace_dim, noise=noise
    )
    _positive_int("num_train", num_train)
    _positive_int("num_test", num_test)
    generator = torch.Generator().manual_seed(seed)
    dim = info.image_size**2
    *train, bases = make_subspaces(
        num_train, dim=dim, num_subspaces=num_subspaces, subspace_dim=subspace_dim,
        noise=noise, generator=generator,
    )
    test = sample_subspaces(bases, num_test, noise=noise, generator=generator)
    samples, labels = train if is_train else test
    images = (samples / info.std[0]).reshape(-1, 1, info.image_size, info.image_size)
    dataset = TensorImageDataset(
        images, labels, info=info, classes=[f"subspace_{k}" for k in range(num_subspaces)]
    )
    dataset.bases = bases
    return dataset
