"""experiments/language_layers.py: the layer-wise causal R^c of a language model, in its two conventions."""
import torch

from experiments.language_layers import causal_rc, layer_table, unit_heads
from srr.models import create_model
from srr.objective.causal import causal_compressed_coding_rate


def test_unit_convention_is_the_sum_of_each_heads_normalised_rate():
    torch.manual_seed(0)
    Z, U = torch.randn(2, 9, 12, dtype=torch.float64), torch.randn(3, 12, 4, dtype=torch.float64)
    Zu, Uu = unit_heads(Z, U)
    per_head = 0.0
    for k in range(3):
        A = Z @ U[k]
        A = A / A.norm(dim=-1, keepdim=True)
        per_head = per_head + causal_compressed_coding_rate(A, torch.eye(4, dtype=torch.float64)[None], 0.1,
                                                            per_position=True)
    torch.testing.assert_close(causal_compressed_coding_rate(Zu, Uu, 0.1, per_position=True), per_head)
    assert abs(causal_rc(Z, U, "unit") - float(per_head.mean())) < 1e-9
    assert causal_rc(2 * Z, U, "unit") == causal_rc(Z, U, "unit")  # scale-free
    assert causal_rc(2 * Z, U, "raw") > causal_rc(Z, U, "raw")


def test_layer_table_reads_each_layer_of_crate_lm():
    torch.manual_seed(0)
    model = create_model("crate_lm_nano", depth=2)
    rows = layer_table(model, torch.randint(65, (2, 16)))
    assert [r["layer"] for r in rows] == [0, 1]
    for r in rows:
        assert 0 < r["sparsity"] < 1  # the ISTA output: some exact zeros
        for c in ("raw", "unit"):
            assert r[f"attention_lowers_rc_{c}"] == (r[f"rc_after_{c}"] < r[f"rc_before_{c}"])
