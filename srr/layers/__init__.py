"""Hand-optimised CRATE layers and their checks against the derived references (MATH.md §4).

- ``MSSA``: compression half-step, softmax attention (E8) with HU24's output variants;
  ``ExactCompression``: the exact gradient step on ``R^c`` (E6). ``forward`` returns the update,
  ``step(x) = x + forward(x)``.
- ``TSSA``: Token Statistics Self-Attention (ToST), a gradient step on R^c_var (E12–E13), O(N).
- ``ISTA``: sparsification step (E10) with one token-wise matmul (E10'); a Triton kernel with ``backend="triton"``.
- ``OvercompleteISTA``: CRATE-α sparsification (overcomplete D, k steps from 0, decoder D₁).
- ``CausalMSSA`` (E15, CRATE-GPT), ``CausalExactCompression`` (E14), ``CausalTSSA`` (E16, ToST's language
  model): causal layers for language, token t updated from its prefix only.
- ``check``: any of them against its ``reference`` (the derived step) in float64 → ``CheckReport``.

Every layer takes ``backend=``: ``"auto"``/``"fused"`` runs the fast path, ``"reference"`` the reference.
"""
from srr.layers.causal import CausalExactCompression, CausalMSSA, CausalTSSA
from srr.layers.check import CheckReport, check, relative_error
from srr.layers.exact import ExactCompression
from srr.layers.ista import ISTA, OvercompleteISTA
from srr.layers.mssa import MSSA
from srr.layers.tssa import TSSA

__all__ = ["MSSA", "ExactCompression", "TSSA", "ISTA", "OvercompleteISTA", "check", "CheckReport", "relative_error",
           "CausalMSSA", "CausalExactCompression", "CausalTSSA"]
