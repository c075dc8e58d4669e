"""The training-step profile behind issue 12's item 5 bound (srr/bench/profile_train.py): op categories."""
from __future__ import annotations

import pytest

from srr.bench.profile_train import CATEGORIES, category


@pytest.mark.parametrize("name, in_optimizer, expected", [
    ("aten::mm", False, "matmul"), ("aten::addmm", False, "matmul"), ("aten::addmm_", False, "matmul"),
    ("mkldnn::_linear_pointwise", False, "matmul"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu_backward", False, "attention"),
    ("aten::bmm", False, "attention"), ("aten::_softmax_backward_data", False, "attention"),
    ("aten::native_layer_norm_backward", False, "layernorm"),
    ("aten::add_", True, "optimizer"), ("aten::_foreach_mul_", False, "optimizer"), ("aten::mm", True, "optimizer"),
    ("aten::fill_", False, "other"), ("aten::threshold_backward", False, "other"), ("aten::gelu", False, "other"),
])
def test_each_op_falls_in_one_category(name, in_optimizer, expected):
    assert category(name, in_optimizer) == expected
    assert expected in CATEGORIES


def test_profile_step_splits_other_by_op_and_caller():
    """The ``other`` category per op adds up to the category, and names where each op comes from: tied SDPA's
    backward zero-fills its three gradients (``aten::fill_ < …flash_attention_for_cpu_backward``)."""
    import torch

    from srr.bench.profile_train import profile_step
    from srr.layers import MSSA

    torch.manual_seed(0)
    layer = MSSA(64, heads=2)
    x = torch.randn(8, 65, 64, requires_grad=True)  # above zero_'s memset size: its fill_ shows

    def step():
        layer.add_update(x, x).square().sum().backward()

    step()
    totals, other = profile_step(step)
    assert set(totals) == set(CATEGORIES) and totals["attention"] > 0
    assert sum(other.values()) == pytest.approx(totals["other"], rel=1e-6)
    assert all(" < " in op for op in other)
    assert any(op.startswith("aten::fill_ < ") and "attention" in op and "backward" in op for op in other), other
