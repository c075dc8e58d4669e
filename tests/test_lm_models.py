"""The causal language models (srr/models/lm.py), parametrised over every registered one: shapes, no NaN, every
parameter learns, causality of the whole model, sampling; and what each variant is made of (MATH.md §8)."""
import math

import pytest
import torch

from srr.layers import ISTA
from srr.models import LanguageModel, LMConfig, create_model, list_models
from srr.models.lm import FAMILIES, SIZES

LANGUAGE = list_models(task="language")
NANO = [n for n in LANGUAGE if n.endswith("_nano")]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared machine, torch's default spins and runs the small ops many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SLOW = ("crate_lm_exact_small", "crate_lm_derived_small")  # per-prefix p×p solves at T = 256: seconds each
SLOW_STEPS = ("crate_lm_exact_nano", "crate_lm_derived_nano")  # ~0.1 s a forward


def _params(name):
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in name]


def test_every_variant_is_registered_in_both_sizes_apart_from_the_image_models():
    assert sorted(LANGUAGE) == sorted(f"{family}_{size}" for family in FAMILIES.values() for size in SIZES)
    assert not set(LANGUAGE) & set(list_models())  # image callers (srr models, image tests) see image models only
    assert set(list_models(task=None)) == set(LANGUAGE) | set(list_models())


@pytest.mark.parametrize("name", _params(LANGUAGE))
def test_registered_language_model_forward_is_finite_and_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = create_model(name, vocab_size=11)
    T = model.config.context  # the whole context: per-position parameters (TSSA's denom_bias) all take part
    idx = torch.randint(11, (2, T))
    logits = model(idx)
    assert logits.shape == (2, T, 11) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.randint(11, (2 * T,))).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{pname} got an all-zero gradient"


@pytest.mark.parametrize("name", _params(LANGUAGE))
def test_registered_language_model_is_causal(name):
    """Changing tokens t+1, … leaves the logits at positions ≤ t bit-identical."""
    torch.manual_seed(0)
    model = create_model(name, vocab_size=13).eval()
    T = 24
    idx = torch.randint(13, (2, T))
    changed = idx.clone()
    t = 9
    changed[:, t + 1:] = (idx[:, t + 1:] + 1 + torch.randint(11, (2, T - t - 1))) % 13
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.equal(a[:, :t + 1], b[:, :t + 1])
    assert not torch.equal(a[:, t + 1:], b[:, t + 1:])  # the later positions did see the change


@pytest.mark.parametrize("name", NANO)
def test_generate_samples_from_the_vocabulary_reproducibly(name):
    torch.manual_seed(0)
    model = create_model(name, vocab_size=7)
    prompt = torch.zeros(2, 3, dtype=torch.long)
    steps = 6 if name in SLOW_STEPS else 70  # 70: past the context of 64, where the oldest tokens are cut
    a = model.generate(prompt, steps, generator=torch.Generator().manual_seed(1))
    b = model.generate(prompt, steps, generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, 3 + steps) and torch.equal(a[:, :3], prompt) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() < 7
    greedy = model.generate(prompt, 5, top_k=1)
    with torch.no_grad():
        first = model(prompt)[:, -1].argmax(-1)
    assert torch.equal(greedy[:, 3], first)
    assert model.training  # generate leaves the mode as it found it


def test_gpt_baseline_is_nanogpts_cpu_model():
    model = create_model("gpt_lm_nano")
    c = model.config
    assert (c.depth, c.dim, c.heads, c.context, c.vocab_size) == (4, 128, 4, 64, 65)
    n = sum(p.numel() for p in model.parameters())
    assert n - model.transformer.wpe.weight.numel() == 795_904  # nanoGPT's get_num_params: "0.80M"
    assert model.lm_head.weight is model.transformer.wte.weight
    assert not any(name.endswith("bias") for name, _ in model.named_parameters())  # train.py's bias = False


def test_crate_lm_is_crate_gpt():
    """E15: x + MSSA(LN x), then ISTA(LN x) with no residual; tied head; no final LN; GPT-2 init."""
    torch.manual_seed(0)
    model = create_model("crate_lm_nano")
    block = model.blocks()[0]
    assert isinstance(block.mlp, ISTA) and isinstance(model.transformer.ln_f, torch.nn.Identity)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert block.attn.c_attn.bias is None and block.attn.c_proj.bias is not None
    x = torch.randn(2, 10, 128)
    half = x + block.attn(block.ln_1(x))
    assert torch.allclose(block(x), block.mlp(block.ln_2(half)))  # the layer's output is ISTA's: ≥ 0
    assert (block(x) >= 0).all()
    std = block.attn.c_proj.weight.std().item()
    assert abs(std - 0.02 / math.sqrt(2 * 4)) < 0.002  # GPT-2's depth-scaled residual projection
    assert abs(block.attn.c_attn.weight.std().item() - 0.02) < 0.002
    assert block.mlp.weight.std().item() > 0.05  # D keeps its kaiming-uniform init


def test_tost_lm_has_layer_scale_at_1e_5_and_a_gelu_mlp():
    model = create_model("tost_lm_nano")
    block = model.blocks()[0]
    for scale in (block.ls_1, block.ls_2):
        assert torch.equal(scale.gamma, torch.full((128,), 1e-5))
    assert isinstance(block.mlp.gelu, torch.nn.GELU)
    assert type(block.attn).__name__ == "CausalTSSA" and block.attn.denom_bias.shape == (4, 64, 1)
    x = torch.randn(2, 10, 128)
    assert (block(x) - x).abs().max() < 1e-3  # LayerScale: each block starts near the identity
    assert isinstance(model.transformer.ln_f, torch.nn.LayerNorm)


def test_exact_and_derived_use_the_causal_step():
    exact = create_model("crate_lm_exact_nano").blocks()[0]
    assert type(exact.attn).__name__ == "CausalExactCompression" and isinstance(exact.mlp, ISTA)
    derived = create_model("crate_lm_derived_nano").blocks()[0]
    assert type(derived.attn.layer).__name__ == "DerivedLayer"
    assert type(derived.mlp.layer).__name__ == "DerivedLayer"


def test_forward_layer_tokens_matches_forward():
    torch.manual_seed(0)
    model = create_model("crate_lm_nano").eval()
    idx = torch.randint(65, (2, 16))
    logits, layers = model.forward_layer_tokens(idx)
    assert torch.equal(logits, model(idx)) and len(layers) == 4
    assert all(torch.equal(a.output, b.input) for a, b in zip(layers, layers[1:]))


def test_bad_configs_and_inputs_name_the_problem():
    with pytest.raises(ValueError, match="variant"):
        LMConfig(variant="bert")
    with pytest.raises(ValueError, match="divisible"):
        LMConfig(dim=10, heads=4)
    model = LanguageModel(LMConfig(variant="gpt", context=8, dim=16, heads=2, depth=1))
    with pytest.raises(ValueError, match="context 8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.zeros(1, 4))


def test_a_saved_language_model_loads_back_strictly(tmp_path):
    from srr.models import save_checkpoint
    from srr.models.checkpoints import CheckpointError
    from srr.models.lm import load_language_model

    torch.manual_seed(0)
    model = create_model("tost_lm_nano", vocab_size=9)
    path = save_checkpoint(model, tmp_path / "m.pt")
    again = load_language_model(path)
    assert again.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values()))
    save_checkpoint(create_model("crate_nano"), tmp_path / "image.pt")
    with pytest.raises(CheckpointError, match="language model"):
        load_language_model(tmp_path / "image.pt")
