"""Tests of the weight-sharing supernet: subnet equivalence, gradient slices, bias handling, safetensors round trip."""

import random

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from safetensors import safe_open  # noqa: E402

from hwgpt_bench.generation.model import GPT  # noqa: E402
from hwgpt_bench.generation.supernet import (  # noqa: E402
    SuperGPT,
    extract_subnet,
    load_supernet,
    save_supernet,
)
from hwgpt_bench.search_spaces import SPACES, ArchConfig, SearchSpace, random_arch  # noqa: E402

NANO = SPACES["gpt-nano"]
TINY = SearchSpace("tiny-test", embed_dims=(16, 32), n_layers=(1, 2), n_heads=(1, 2), mlp_ratios=(1, 2), head_size=8,
                   block_size=16, vocab_size=64)


def _randomise(module, seed: int = 0) -> None:
    """Non-trivial weights everywhere, biases and LayerNorm weights included, so that every slice matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.1
            p.copy_(noise + 1.0 if "norm" in name and name.endswith("weight") else noise)


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    sn = SuperGPT("gpt-nano")
    _randomise(sn)
    return sn


@pytest.fixture(scope="module")
def idx():
    return torch.randint(0, NANO.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))


def _archs():
    rng = random.Random(7)
    return [NANO.smallest(), NANO.largest()] + [random_arch(NANO, rng) for _ in range(5)]


def test_supernet_holds_the_largest_shapes_with_biases(supernet):
    state = supernet.state_dict()
    assert len(supernet.blocks) == NANO.max_layers
    assert state["wte.weight"].shape == (NANO.vocab_size, 256)
    assert state["blocks.5.attn.q.weight"].shape == (8 * 32, 256)
    assert state["blocks.5.attn.proj.weight"].shape == (256, 8 * 32)
    assert state["blocks.0.mlp.fc.weight"].shape == (4 * 256, 256)
    assert state["blocks.0.mlp.fc.bias"].shape == (4 * 256,)
    assert state["ln_f.bias"].shape == (256,)
    with torch.device("meta"):
        largest = GPT(NANO.largest()).state_dict()
    assert set(state) == set(largest)  # same names as the standalone model
    assert all(state[k].shape == largest[k].shape for k in state)


@pytest.mark.parametrize("arch", _archs(), ids=lambda a: a.arch_id)
def test_extracted_subnet_matches_supernet(supernet, idx, arch):
    model = extract_subnet(supernet, arch)
    assert isinstance(model, GPT) and model.arch == arch and not model.training
    assert sum(p.numel() for p in model.parameters()) == arch.num_params()
    with torch.no_grad():
        torch.testing.assert_close(model(idx), supernet(idx, arch))


def test_different_archs_give_different_logits(supernet, idx):
    a, b = NANO.smallest(), ArchConfig("gpt-nano", 128, 4, (2, 2, 2, 4), (2, 2, 2, 2), False)
    with torch.no_grad():
        assert not torch.allclose(supernet(idx, a), supernet(idx, b))


def test_sub_state_dict_is_a_detached_contiguous_copy(supernet):
    arch = ArchConfig("gpt-nano", 192, 4, (4, 2, 8, 4), (3, 2, 4, 2), True)
    state = supernet.sub_state_dict(arch)
    with torch.device("meta"):
        expected = GPT(arch).state_dict()
    assert set(state) == set(expected)
    for name, t in state.items():
        assert t.shape == expected[name].shape and t.is_contiguous() and not t.requires_grad, name
    torch.testing.assert_close(state["blocks.2.attn.q.weight"], supernet.blocks[2].attn.q.weight[:256, :192])
    torch.testing.assert_close(state["blocks.2.attn.proj.weight"], supernet.blocks[2].attn.proj.weight[:192, :256])
    torch.testing.assert_close(state["blocks.1.mlp.fc.bias"], supernet.blocks[1].mlp.fc.bias[:384])
    torch.testing.assert_close(state["wte.weight"], supernet.wte.weight[:, :192])
    before = supernet.wte.weight[0, 0].item()
    state["wte.weight"][0, 0] += 1.0
    assert supernet.wte.weight[0, 0].item() == before


def test_activate_and_forward_errors(idx):
    sn = SuperGPT("gpt-nano")
    with pytest.raises(ValueError, match="no subnet is active"):
        sn(idx)
    arch = NANO.smallest()
    sn.activate(arch)
    assert sn.active_arch == arch
    with torch.no_grad():
        torch.testing.assert_close(sn(idx), sn(idx, arch))
    other = SPACES["gpt-s"].smallest()
    with pytest.raises(ValueError, match="space"):
        sn.activate(other)
    with pytest.raises(ValueError, match="space"):
        sn(idx, other)
    with pytest.raises(ValueError, match="space"):
        sn.sub_state_dict(other)


def test_gradients_flow_only_into_the_active_slices():
    torch.manual_seed(0)
    sn = SuperGPT("gpt-nano")
    _randomise(sn)
    arch = ArchConfig("gpt-nano", 128, 4, (2, 4, 2, 2), (2, 3, 2, 2), True)
    tokens = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    sn(tokens, arch).logsumexp(-1).sum().backward()
    assert sn.wte.weight.grad[:, :128].abs().sum() > 0 and torch.all(sn.wte.weight.grad[:, 128:] == 0)
    q = sn.blocks[1].attn.q
    assert q.weight.grad[:128, :128].abs().min() > 0  # 4 heads x 32: every active entry gets a gradient
    assert torch.all(q.weight.grad[128:] == 0) and torch.all(q.weight.grad[:, 128:] == 0)
    assert torch.all(q.bias.grad[128:] == 0) and q.bias.grad[:128].abs().sum() > 0
    proj = sn.blocks[0].attn.proj
    assert torch.all(proj.weight.grad[:, 64:] == 0) and torch.all(proj.weight.grad[128:] == 0)
    fc = sn.blocks[1].mlp.fc
    assert torch.all(fc.weight.grad[384:] == 0) and fc.weight.grad[:384, :128].abs().sum() > 0
    assert torch.all(sn.blocks[1].mlp.proj.weight.grad[:, 384:] == 0)
    assert torch.all(sn.ln_f.weight.grad[128:] == 0) and torch.all(sn.blocks[0].norm_1.bias.grad[128:] == 0)
    assert all(p.grad is None for p in sn.blocks[4].parameters())  # blocks beyond n_layer are unused


def test_bias_free_archs_ignore_the_biases(idx):
    torch.manual_seed(0)
    sn = SuperGPT("gpt-nano")
    _randomise(sn)
    no_bias = ArchConfig("gpt-nano", 192, 5, (4, 8, 2, 4, 2), (3, 4, 2, 2, 3), False)
    with_bias = ArchConfig("gpt-nano", 192, 5, (4, 8, 2, 4, 2), (3, 4, 2, 2, 3), True)
    with torch.no_grad():
        before_no, before_with = sn(idx, no_bias), sn(idx, with_bias)
        assert not torch.allclose(before_no, before_with)
        for name, p in sn.named_parameters():
            if name.endswith("bias"):
                p.add_(1.0)
        torch.testing.assert_close(sn(idx, no_bias), before_no, rtol=0, atol=0)
        assert not torch.allclose(sn(idx, with_bias), before_with)
    sn(idx, no_bias).sum().backward()
    assert all(p.grad is None for name, p in sn.named_parameters() if name.endswith("bias"))


# ---- checkpoints ------------------------------------------------------------------------------------------------
def test_save_and_load_round_trip(supernet, idx, tmp_path):
    path = tmp_path / "supernet.safetensors"
    save_supernet(supernet, path)
    assert path.exists() and not list(tmp_path.glob(".tmp-*"))
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["space"] == "gpt-nano"
    loaded = load_supernet(path)
    assert loaded.space == NANO
    for (name, a), b in zip(supernet.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    arch = _archs()[3]
    with torch.no_grad():
        torch.testing.assert_close(loaded(idx, arch), supernet(idx, arch), rtol=0, atol=0)
    with pytest.raises(ValueError, match="space"):
        load_supernet(path, space="gpt-s")


def test_unregistered_space_is_rebuilt_from_the_metadata(tmp_path):
    torch.manual_seed(0)
    sn = SuperGPT(TINY)
    assert sn.wte.weight.shape == (64, 32) and len(sn.blocks) == 2
    assert sn.blocks[1].attn.q.weight.shape == (16, 32) and sn.blocks[1].mlp.fc.weight.shape == (64, 32)
    path = tmp_path / "tiny.safetensors"
    save_supernet(sn, path)
    loaded = load_supernet(path)
    assert loaded.space == TINY
    assert all(torch.equal(a, b) for a, b in zip(sn.state_dict().values(), loaded.state_dict().values(), strict=True))
    assert load_supernet(path, space=TINY).space == TINY


def test_load_rejects_files_that_are_not_supernet_checkpoints(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(path), metadata={"space": "gpt-nano"})
    with pytest.raises(ValueError, match="not a supernet checkpoint"):
        load_supernet(path)
