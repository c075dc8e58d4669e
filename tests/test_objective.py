"""The symbolic objective: evaluation, printing, parsing, smooth/non-smooth split and proxes."""
import re

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import srr
from srr.objective import (CodingRate, CompressedCodingRate, L0, L1, LeastSquares, NonNegative, Objective,
                           SquaredL2, parse)
from srr.rates import coding_rate, compressed_coding_rate

f64 = torch.float64
seeds = st.integers(0, 2**31 - 1)
coefs = st.floats(-10, 10, allow_nan=False).filter(lambda c: c != 0)


def tokens(seed, shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=f64)


@given(seeds, st.floats(0.05, 2.0))
def test_terms_equal_the_functions(seed, eps):
    Z, U = tokens(seed, (3, 7, 6)), tokens(seed + 1, (2, 6, 3))
    assert torch.equal(CompressedCodingRate(eps=eps)(Z, U=U), compressed_coding_rate(Z, U, eps))
    assert torch.equal(CodingRate(eps=eps)(Z), coding_rate(Z, eps))
    obj = CompressedCodingRate(eps=eps) - CodingRate(eps=eps) + 0.1 * L1()
    expected = compressed_coding_rate(Z, U, eps) - coding_rate(Z, eps) + 0.1 * Z.abs().sum((-2, -1))
    assert torch.allclose(obj(Z, U=U), expected, rtol=1e-12, atol=0)


@given(coefs, coefs, st.floats(1e-3, 5))
def test_str_and_spec_round_trip_the_coefficients(a, b, eps):
    obj = a * CompressedCodingRate(eps=eps) + b * CodingRate(eps=eps) + 0.25 * L1(lam=0.1) + NonNegative()
    assert parse(obj.spec()) == obj
    numbers = [float(x) for x in re.findall(r"(?<![\w.])[0-9][0-9.e+-]*", str(obj))]
    for value in (abs(a), abs(b), eps, 0.25, 0.1):
        assert value in numbers or value == 1.0


def test_printing_reads_as_math():
    obj = CompressedCodingRate(eps=0.5) - CodingRate(eps=0.5) + 0.1 * L1() + NonNegative()
    assert str(obj) == "R^c(Z; U, ε=0.5) - R(Z; ε=0.5) + 0.1·‖Z‖₁ + ι≥0(Z)"
    assert obj.latex().startswith(r"R^c(\mathbf{Z};\,\mathbf{U},\,\epsilon=0.5) - R(")
    assert obj.spec() == "Rc(eps=0.5) - R(eps=0.5) + 0.1*L1 + NonNeg"
    assert parse("Rc(eps=0.5) + 0.1*L1 + NonNeg") == CompressedCodingRate(eps=0.5) + 0.1 * L1() + NonNegative()


def test_terms_are_immutable_and_hashable():
    term = L1(lam=0.2)
    with pytest.raises(Exception):
        term.lam = 1.0
    assert hash(term) == hash(L1(lam=0.2))
    assert {CompressedCodingRate(eps=(0.1, 0.2))} == {CompressedCodingRate(eps=[0.1, 0.2])}


def test_split_into_smooth_and_nonsmooth():
    obj = LeastSquares() + 0.1 * L1() + SquaredL2(lam=0.5) + NonNegative()
    assert obj.smooth_part() == LeastSquares() + SquaredL2(lam=0.5)
    assert obj.nonsmooth_part() == 0.1 * L1() + NonNegative()
    assert obj.requires == ("X", "D")


def brute_force_prox(v, objective, step, grid):
    """argmin_z g(z) + (z − v)²/(2·step) over a fine grid, entry by entry."""
    z = grid[:, None]
    vals = objective(z[:, :, None].expand(-1, v.numel(), 1).reshape(-1, 1, 1)).reshape(len(grid), -1)
    vals = vals + (z - v.flatten()[None]) ** 2 / (2 * step)
    return grid[vals.argmin(0)].reshape(v.shape)


@given(seeds, st.floats(0.0, 2.0), st.floats(0.05, 2.0))
def test_prox_of_l1_plus_nonnegative_is_the_exact_minimiser(seed, lam, step):
    v = (3 * tokens(seed, (1, 6))).clamp(-5, 5)  # inside the brute-force grid
    obj = L1(lam=lam) + NonNegative()
    grid = torch.cat([torch.linspace(-6, 6, 24001, dtype=f64), torch.zeros(1, dtype=f64)])  # exact 0 for ‖·‖₀
    assert torch.allclose(obj.prox(v, step), torch.relu(v - step * lam))
    assert torch.allclose(obj.prox(v, step), brute_force_prox(v, obj, step, grid), atol=1e-3)


@given(seeds, st.floats(0.0, 2.0), st.floats(0.05, 2.0))
def test_prox_of_l1_and_l0_are_exact_minimisers(seed, lam, step):
    v = (3 * tokens(seed, (1, 6))).clamp(-5, 5)  # inside the brute-force grid
    grid = torch.cat([torch.linspace(-6, 6, 24001, dtype=f64), torch.zeros(1, dtype=f64)])  # exact 0 for ‖·‖₀
    for obj in (Objective.of(L1(lam=lam)), Objective.of(L0(lam=lam)), L0(lam=lam) + NonNegative()):
        got, want = obj.prox(v, step), brute_force_prox(v, obj, step, grid)
        # at a tie of the hard threshold either answer is a minimiser; grid points are never exact ties
        assert torch.allclose(got, want, atol=1e-3), (obj, got, want)


def test_penalties_of_one_kind_add_and_kinds_do_not_mix():
    v = tokens(0, (2, 5))
    assert torch.allclose((L1(lam=0.1) + 2 * L1(lam=0.2)).prox(v, 0.5), L1(lam=0.5).prox(v, 0.5))
    with pytest.raises(ValueError, match="no closed-form proximal operator"):
        (L1() + L0()).prox(v, 0.1)
    with pytest.raises(ValueError, match="coefficient > 0"):
        (-1 * L1()).prox(v, 0.1)


def test_missing_and_unknown_parameters_are_named():
    obj = CompressedCodingRate(eps=0.5) + CodingRate(eps=0.5)
    Z = tokens(0, (4, 3))
    with pytest.raises(TypeError, match="needs parameter"):
        obj(Z)
    with pytest.raises(TypeError, match=r"unexpected parameter\(s\) \['u'\]"):
        obj(Z, u=torch.eye(3)[None])


def test_parse_errors_are_clear():
    with pytest.raises(ValueError, match="unknown term 'Foo'"):
        parse("Rc + Foo")
    with pytest.raises(ValueError, match="not a valid expression"):
        parse("Rc +")
    with pytest.raises(ValueError, match="eps"):
        parse("Rc(eps=-1)")
    with pytest.raises(ValueError, match="non-empty"):
        parse("  ")
    with pytest.raises(ValueError, match="unknown term '__import__'"):
        parse("__import__('os')")
    with pytest.raises(ValueError, match="cannot read"):
        parse("Rc ** 2")


def test_bad_term_arguments():
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        CodingRate(eps=0)
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        L1(lam=-0.1)
    with pytest.raises(TypeError, match="finite number"):
        CodingRate() * float("nan")


def test_public_api_matches_objective():
    Z, U = tokens(0, (2, 5, 4)), tokens(1, (2, 4, 2))
    assert torch.equal(srr.objective.CompressedCodingRate(eps=0.3)(Z, U=U), srr.compressed_coding_rate(Z, U, 0.3))
