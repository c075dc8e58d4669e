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
