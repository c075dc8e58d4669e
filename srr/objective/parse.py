"""Read an objective from text, e.g. ``"Rc(eps=0.5) + 0.1*L1 + NonNeg"`` (the CLI's syntax and
``Objective.spec()``'s output). Parsed with Python's ``ast`` against a whitelist: no ``eval``."""
from __future__ import annotations

import ast

from srr.objective.base import Objective, Term
from srr.objective.causal import CausalCompressedCodingRate, CausalVariationalCompressedCodingRate
from srr.objective.terms import (CodingRate, CompressedCodingRate, L0, L1, LeastSquares, NonNegative,
                                 SquaredL2, VariationalCompressedCodingRate)

TERMS: dict[str, type[Term]] = {
    "R": CodingRate, "CodingRate": CodingRate,
    "Rc": CompressedCodingRate, "CompressedCodingRate": CompressedCodingRate,
    "RcVar": VariationalCompressedCodingRate, "VariationalCompressedCodingRate": VariationalCompressedCodingRate,
    "L1": L1, "L0": L0, "L2": SquaredL2, "SquaredL2": SquaredL2,
    "NonNeg": NonNegative, "NonNegative": NonNegative,
    "LeastSquares": LeastSquares, "LS": LeastSquares,
    "RcCausal": CausalCompressedCodingRate, "CausalCompressedCodingRate": CausalCompressedCodingRate,
    "RcVarCausal": CausalVariationalCompressedCodingRate,
    "CausalVariationalCompressedCodingRate": CausalVariationalCompressedCodingRate,
}


def _constant(node: ast.AST, text: str):
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_constant(node.operand, text)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, (ast.Tuple, ast.List)):
        return tuple(_constant(e, text) for e in node.elts)
    raise ValueError(f"objective {text!r}: expected a number, got {ast.unparse(node)!r}")


def _build(node: ast.AST, text: str):
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
        left, right = _build(node.left, text), _build(node.right, text)
        return left + right if isinstance(node.op, ast.Add) else left - right
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        if isinstance(node.left, (ast.Constant, ast.UnaryOp)):
            return _constant(node.left, text) * Objective.of(_build(node.right, text))
        return Objective.of(_build(node.left, text)) * _constant(node.right, text)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -Objective.of(_build(node.operand, text))
    if isinstance(node, ast.Name):
        return _term(node.id, {}, text)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        if node.func.id not in TERMS:
            return _term(node.func.id, {}, text)  # raises: unknown term
        if node.args:
            raise ValueError(f"objective {text!r}: give term arguments by name, e.g. Rc(eps=0.5), got "
                             f"{ast.unparse(node)!r}")
        return _term(node.func.id, {k.arg: _constant(k.value, text) for k in node.keywords}, text)
    raise ValueError(f"objective {text!r}: cannot read {ast.unparse(node)!r}; write terms like 'Rc(eps=0.5) + 0.1*L1 "
                     f"+ NonNeg'")


def _term(name: str, kwargs: dict, text: str) -> Term:
    if name not in TERMS:
        raise ValueError(f"objective {text!r}: unknown term {name!r}; known terms: {', '.join(sorted(TERMS))}")
    try:
        return TERMS[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"objective {text!r}: bad arguments for {name}: {err}") from None


def parse(text: str) -> Objective:
    """Objective from text: terms ``R, Rc, RcVar, RcCausal, RcVarCausal, L1, L0, L2, NonNeg, LeastSquares`` with keyword
    arguments, combined by ``+``, ``-`` and number ``*``."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"objective text must be a non-empty string, got {text!r}")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise ValueError(f"objective {text!r} is not a valid expression: {err.msg}") from None
    return Objective.of(_build(tree.body, text))
