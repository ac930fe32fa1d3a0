"""Tests of the standalone GPT: parameter count, reference equivalence, RoPE, causality, KV cache, initialisation."""

import math
import random

import pytest

torch = pytest.importorskip("torch")

from hwgpt_bench.generation.model import (  # noqa: E402
    GPT,
    INIT_STD,
    TILE_VALUES,
    KVCache,
    build_model,
    build_rope_cache,
    init_weights,
    rope_heads,
)
from hwgpt_bench.search_spaces import SPACES, ArchConfig, random_arch  # noqa: E402

NANO = SPACES["gpt-nano"]


def _nano(bias: bool = True, n_head=(2, 8, 4, 2), mlp_ratio=(2, 4, 3, 2), embed_dim: int = 128) -> ArchConfig:
    return ArchConfig("gpt-nano", embed_dim, 4, n_head, mlp_ratio, bias)


def _tokens(batch: int = 2, t: int = 12, seed: int = 0):
    return torch.randint(0, NANO.vocab_size, (batch, t), generator=torch.Generator().manual_seed(seed))


def _randomise(model, seed: int = 1) -> None:
    """Non-trivial weights everywhere (biases and LayerNorm weights included) so that every term matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.1
            p.copy_(noise + 1.0 if "norm" in name and name.endswith("weight") else noise)


# ---- an independent, deliberately naive implementation -----------------------------------------------------------
def _ref_layer_norm(x, weight, bias):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + 1e-5) * weight
    return y if bias is None else y + bias


def _ref_linear(layer, x):
    y = x @ layer.weight.T
    return y if layer.bias is None else y + layer.bias


def _ref_rope(x, r):
    """Rotate pairs (j, j + r/2) of the first r dims of x (B, H, T, S) by angle pos * 10000^(-2j/r)."""
    t = x.size(-2)
    angles = torch.arange(t, dtype=torch.float32)[:, None] * 10000.0 ** (-torch.arange(0, r, 2) / r)[None, :]
    c, s = torch.cos(angles), torch.sin(angles)
    a, b = x[..., : r // 2], x[..., r // 2 : r]
    return torch.cat([a * c - b * s, b * c + a * s, x[..., r:]], dim=-1)


def _ref_forward(model, idx):
    sp = model.arch.search_space
    b, t = idx.shape
    x = model.wte.weight[idx]
    causal = torch.tril(torch.ones(t, t, dtype=torch.bool))
    for blk in model.blocks:
        h = _ref_layer_norm(x, blk.norm_1.weight, blk.norm_1.bias)
        q, k, v = (_ref_linear(lin, h).view(b, t, -1, sp.head_size).transpose(1, 2)
                   for lin in (blk.attn.q, blk.attn.k, blk.attn.v))
        q, k = _ref_rope(q, sp.rotary_dims), _ref_rope(k, sp.rotary_dims)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(sp.head_size)
        att = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1) @ v
        attn_out = _ref_linear(blk.attn.proj, att.transpose(1, 2).reshape(b, t, -1))
        u = _ref_linear(blk.mlp.fc, _ref_layer_norm(x, blk.norm_2.weight, blk.norm_2.bias))
        gelu = 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3)))
        x = x + attn_out + _ref_linear(blk.mlp.proj, gelu)
    return _ref_layer_norm(x, model.ln_f.weight, model.ln_f.bias) @ model.wte.weight.T


# ---- structure and parameter count ---------------------------------------------------------------------------------
@pytest.mark.parametrize("space", sorted(SPACES))
def test_parameter_count_matches_arch_num_params(space):
    rng = random.Random(space)
    archs = [SPACES[space].smallest(), SPACES[space].largest()] + [random_arch(space, rng) for _ in range(3)]
    for arch in archs:
        with torch.device("meta"):
            model = GPT(arch)
        assert sum(p.numel() for p in model.parameters()) == arch.num_params(), arch.canonical


def test_module_names_and_shapes():
    arch = _nano(bias=False)
    with torch.device("meta"):
        state = GPT(arch).state_dict()
    assert state["wte.weight"].shape == (NANO.vocab_size, 128)
    assert state["blocks.1.attn.q.weight"].shape == (8 * 32, 128)
    assert state["blocks.1.attn.proj.weight"].shape == (128, 8 * 32)
    assert state["blocks.2.mlp.fc.weight"].shape == (3 * 128, 128)
    assert state["blocks.2.mlp.proj.weight"].shape == (128, 3 * 128)
    assert {k for k in state if "bias" in k} == set()
    assert not any("rope" in k or "head" in k for k in state)  # RoPE table is a buffer; LM head is tied
    with torch.device("meta"):
        with_bias = GPT(_nano(bias=True)).state_dict()
    assert "blocks.3.norm_2.bias" in with_bias and "ln_f.bias" in with_bias and "blocks.0.mlp.fc.bias" in with_bias


def test_lm_head_is_tied_to_the_embedding():
    model = build_model(_nano(), seed=0)
    with torch.no_grad():
        model.wte.weight[7].zero_()
        logits = model(_tokens())
    assert torch.all(logits[..., 7] == 0)
    assert logits[..., 8].abs().max() > 0


# ---- forward ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [False, True])
def test_forward_matches_naive_reference(bias):
    model = build_model(_nano(bias=bias), seed=0)
    _randomise(model)
    idx = _tokens(t=10)
    with torch.no_grad():
        logits = model(idx)
        assert logits.shape == (2, 10, NANO.vocab_size) and logits.dtype == torch.float32
        torch.testing.assert_close(logits, _ref_forward(model, idx), rtol=1e-4, atol=1e-4)


def test_forward_is_causal_and_position_aware():
    model = build_model(_nano(), seed=0)
    _randomise(model)
    idx = _tokens(batch=1, t=12)
    changed = idx.clone()
    changed[0, 8] = (idx[0, 8] + 1) % NANO.vocab_size
    with torch.no_grad():
        a, b = model(idx), model(changed)
        torch.testing.assert_close(a[:, :8], b[:, :8])
        assert not torch.allclose(a[:, 8:], b[:, 8:])
        # same token twice: RoPE is the only source of position information, so the logits must differ
        same = torch.full((1, 2), 5)
        out = model(same)
    assert not torch.allclose(out[0, 0], out[0, 1])


def test_forward_rejects_sequences_longer_than_block_size():
    with torch.device("meta"):
        model = GPT(_nano())
    with pytest.raises(ValueError, match="block size"):
        model(torch.zeros(1, NANO.block_size + 1, dtype=torch.long, device="meta"))


# ---- RoPE -------------------------------------------------------------------------------------------------------
def test_rope_rotates_only_the_rotary_dims_and_is_relative():
    r, s = NANO.rotary_dims, NANO.head_size
    assert 0 < r < s
    cos, sin = build_rope_cache(16, r)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, s, generator=g), torch.randn(1, 1, 1, s, generator=g)
    q_all, k_all = rope_heads(q.expand(1, 1, 16, s), cos, sin), rope_heads(k.expand(1, 1, 16, s), cos, sin)
    torch.testing.assert_close(q_all[..., r:], q.expand(1, 1, 16, s)[..., r:])  # untouched dims
    torch.testing.assert_close(q_all[..., 0, :], q[..., 0, :])  # position 0: no rotation
    torch.testing.assert_close(q_all.norm(dim=-1), q.norm(dim=-1).expand(1, 1, 16))  # rotation keeps norms
    dots = (q_all[0, 0] @ k_all[0, 0].T)  # (16, 16): dot of q at position m with k at position n
    torch.testing.assert_close(dots[3, 1], dots[10, 8])  # depends on m - n only
    torch.testing.assert_close(dots[5, 5], dots[0, 0])
    assert not torch.allclose(dots[3, 1], dots[3, 2])


# ---- KV cache -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [False, True])
def test_prefill_and_decode_match_full_forward(bias):
    model = build_model(_nano(bias=bias), seed=3)
    _randomise(model)
    idx = _tokens(batch=2, t=14)
    cache = model.new_kv_cache(batch_size=2, max_seq_len=20)
    with torch.no_grad():
        full = model(idx)
        steps = [model.forward_cached(idx[:, :6], cache, start_pos=0)]  # prefill
        steps.append(model.forward_cached(idx[:, 6:9], cache, start_pos=6))  # chunked prefill (rectangular mask)
        steps += [model.forward_cached(idx[:, p:p + 1], cache, start_pos=p) for p in range(9, 14)]  # decode
    torch.testing.assert_close(torch.cat(steps, dim=1), full)
    assert steps[-1].shape == (2, 1, NANO.vocab_size)


def test_kv_cache_shapes_and_validation():
    model = build_model(_nano(bias=False), seed=0)
    cache = model.new_kv_cache(3, 32, dtype=torch.bfloat16)
    assert isinstance(cache, KVCache) and cache.n_layer == 4
    assert [tuple(k.shape) for k in cache.keys] == [(3, h, 32, 32) for h in (2, 8, 4, 2)]
    assert all(v.shape == k.shape and v.dtype == torch.bfloat16 for k, v in zip(cache.keys, cache.values, strict=True))
    assert cache.nbytes == 2 * 2 * 3 * 32 * 32 * (2 + 8 + 4 + 2)
    with pytest.raises(ValueError, match="max_seq_len"):
        model.new_kv_cache(1, NANO.block_size + 1)
    small = model.new_kv_cache(2, 8)
    with pytest.raises(ValueError, match="start_pos"):
        model.forward_cached(_tokens(t=4), small, start_pos=6)
    with pytest.raises(ValueError, match="batch size"):
        model.forward_cached(_tokens(batch=1, t=4), small, start_pos=0)


# ---- initialisation ---------------------------------------------------------------------------------------------
def test_build_model_is_deterministic_and_in_eval_mode():
    arch = _nano()
    a, b, c = build_model(arch, seed=5), build_model(arch, seed=5), build_model(arch, seed=6)
    assert not a.training
    for (name, x), y, z in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
        if name.endswith("weight") and "norm" not in name and "ln_f" not in name:
            assert not torch.equal(x, z), name
    with torch.no_grad():
        torch.testing.assert_close(a(_tokens()), b(_tokens()), rtol=0, atol=0)


def test_build_model_initialisation_statistics():
    arch = ArchConfig("gpt-nano", 256, 6, (8,) * 6, (4,) * 6, True)
    model = build_model(arch, seed=0)
    proj_std = INIT_STD / math.sqrt(2 * arch.n_layer)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.all(p == 0), name
        elif "norm" in name or name.startswith("ln_f"):
            assert torch.all(p == 1), name
        else:
            expected = proj_std if name.endswith("proj.weight") else INIT_STD
            assert abs(p.std().item() - expected) < 0.05 * expected, name
            assert abs(p.mean().item()) < 0.05 * expected, name


def test_tiled_init_repeats_one_seeded_table_while_training_init_is_iid():
    """``build_model`` (timed models) fills weights from one table of ``TILE_VALUES`` draws; ``init_weights``
    (what training starts from) draws every value."""
    arch = ArchConfig("gpt-nano", 256, 6, (8,) * 6, (4,) * 6, True)
    wte = build_model(arch, seed=3).wte.weight.detach().flatten()  # 50304 x 256 values: many table periods
    assert wte.numel() > 3 * TILE_VALUES
    torch.testing.assert_close(wte[:TILE_VALUES], wte[TILE_VALUES:2 * TILE_VALUES], rtol=0, atol=0)
    assert torch.unique(wte).numel() <= TILE_VALUES and not torch.any(wte == 0)
    with torch.device("meta"):
        trained = GPT(arch)
    trained.to_empty(device="cpu")
    init_weights(trained, arch.n_layer, torch.Generator().manual_seed(3))
    iid = trained.wte.weight.detach().flatten()
    assert not torch.equal(iid[:TILE_VALUES], iid[TILE_VALUES:2 * TILE_VALUES])
    assert torch.unique(iid).numel() > 10 * TILE_VALUES
    assert abs(iid.std().item() - INIT_STD) < 0.01 * INIT_STD and abs(wte.std().item() - INIT_STD) < 0.05 * INIT_STD


def test_tiled_init_weights_are_bitwise_those_of_release_0_2_0():
    """The one-pass fill (window scaled once) gives exactly the weights of the two-pass fill that measured release
    0.2.0's models (copy the table window, then multiply the weight by its std), so rows stay comparable."""
    from hwgpt_bench.generation.model import _init_modules

    arch = ArchConfig("gpt-nano", 192, 4, (4, 8, 2, 4), (4, 2, 3, 2), True)
    with torch.device("meta"):
        reference = GPT(arch)
    reference.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(5)
    table = torch.randn(TILE_VALUES, generator=generator)
    table = torch.cat([table, table])

    def two_pass_fill(weight, std):
        flat = weight.view(-1)
        start = int(torch.randint(TILE_VALUES, (1,), generator=generator))
        window = table[start:start + TILE_VALUES]
        whole, rest = divmod(flat.numel(), TILE_VALUES)
        flat[:whole * TILE_VALUES].view(whole, TILE_VALUES).copy_(window.expand(whole, TILE_VALUES))
        flat[whole * TILE_VALUES:].copy_(window[:rest])
        flat.mul_(std)

    _init_modules(reference, arch.n_layer, two_pass_fill)
    built = build_model(arch, seed=5).state_dict()
    expected = reference.state_dict()
    assert built.keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(built[name], value), name
