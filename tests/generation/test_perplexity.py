import functools
import math

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from hwgpt_bench.generation.perplexity import (  # noqa: E402
    evaluate_archs,
    evaluate_perplexity,
    select_windows,
    windows,
)
from hwgpt_bench.search_spaces import SPACES, SearchSpace, sample_archs  # noqa: E402

VOCAB = 11


class TinyLM(torch.nn.Module):
    """Embedding + causal running mean + linear head: the logits depend on the whole context, not just one token."""

    def __init__(self, vocab: int = VOCAB, dim: int = 8) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Parameter(torch.randn(vocab, dim, generator=gen))
        self.head = torch.nn.Parameter(torch.randn(vocab, dim, generator=gen))

    def forward(self, idx):
        x = self.emb[idx]  # (B, T, C)
        counts = torch.arange(1, idx.size(1) + 1, dtype=x.dtype).view(1, -1, 1)
        return (x.cumsum(dim=1) / counts) @ self.head.T  # (B, T, V)


def reference(model, tokens: np.ndarray, block_size: int) -> tuple[float, float, int]:
    """Hand computation: every window scored on its own, then one cross-entropy over the concatenated targets."""
    data = torch.as_tensor(tokens, dtype=torch.long)
    logits, targets = [], []
    for start in range(0, len(data) - 1, block_size):
        w = data[start:start + block_size + 1]
        logits.append(model(w[None, :-1])[0])
        targets.append(w[1:])
    logits, targets = torch.cat(logits), torch.cat(targets)
    nll = F.cross_entropy(logits, targets).item()
    acc = (logits.argmax(-1) == targets).double().mean().item()
    return nll, acc, targets.numel()


@pytest.fixture
def tokens():
    return np.random.default_rng(0).integers(0, VOCAB, 3 * 16 + 1 + 5).astype(np.uint16)  # 3 full windows + 5 more


def test_matches_hand_computation_with_partial_last_window(tokens):
    model = TinyLM()
    result = evaluate_perplexity(model, tokens, block_size=16, batch_size=2)
    nll, acc, n = reference(model, tokens, 16)
    assert result.eval_tokens == n == len(tokens) - 1  # every token but the first is predicted once
    assert result.nll == pytest.approx(nll, rel=1e-6)
    assert result.perplexity == pytest.approx(math.exp(nll), rel=1e-6)
    assert result.accuracy == pytest.approx(acc)


def test_windows_stride_and_remainder():
    data = torch.arange(3 * 4 + 1 + 2)
    full, rest = windows(data, 4)
    assert full.tolist() == [[0, 1, 2, 3, 4], [4, 5, 6, 7, 8], [8, 9, 10, 11, 12]]
    assert rest.tolist() == [12, 13, 14]
    assert windows(torch.arange(9), 4)[1] is None
    spread, rest = select_windows(torch.arange(41), 4, max_tokens=9)  # 10 windows, 2 wanted: indices 0 and 5
    assert spread[:, 0].tolist() == [0, 20] and rest is None


def test_batch_size_does_not_change_the_result(tokens):
    model = TinyLM()
    a = evaluate_perplexity(model, tokens, 16, batch_size=1)
    b = evaluate_perplexity(model, tokens, 16, batch_size=8)
    assert a.eval_tokens == b.eval_tokens
    assert a.nll == pytest.approx(b.nll, rel=1e-6)
    assert a.accuracy == b.accuracy


def test_uniform_model_has_perplexity_vocab_size(tokens):
    def uniform(idx):
        return torch.zeros(*idx.shape, VOCAB)

    result = evaluate_perplexity(uniform, tokens, 16)
    assert result.nll == pytest.approx(math.log(VOCAB))
    assert result.perplexity == pytest.approx(VOCAB)
    assert result.accuracy == pytest.approx(np.mean(tokens[1:] == 0))  # argmax ties go to token 0


def test_max_tokens_spreads_whole_windows_over_the_stream():
    model = TinyLM()
    stream = np.random.default_rng(2).integers(0, VOCAB, 10 * 16 + 1 + 7).astype(np.uint16)  # 10 full windows + 7
    result = evaluate_perplexity(model, stream, 16, max_tokens=3 * 16 + 5)
    assert result.eval_tokens == 3 * 16  # whole windows only, at most max_tokens targets
    picked = [stream[i * 16:i * 16 + 17] for i in (0, 3, 6)]  # floor(i * 10 / 3)
    expected = [reference(model, w, 16) for w in picked]
    assert result.nll == pytest.approx(np.mean([e[0] for e in expected]), rel=1e-6)
    assert result.accuracy == pytest.approx(np.mean([e[1] for e in expected]))


def test_max_tokens_below_one_window_uses_a_prefix_and_accepts_tensors(tokens):
    model = TinyLM()
    capped = evaluate_perplexity(model, torch.as_tensor(tokens.astype(np.int64)), 16, max_tokens=5)
    nll, _, n = reference(model, tokens[:6], 16)
    assert capped.eval_tokens == n == 5 and capped.nll == pytest.approx(nll, rel=1e-6)
    everything = evaluate_perplexity(model, tokens, 16, max_tokens=10_000)
    assert everything == evaluate_perplexity(model, tokens, 16)


def test_deterministic(tokens):
    model = TinyLM()
    assert evaluate_perplexity(model, tokens, 16) == evaluate_perplexity(model, tokens, 16)


@pytest.mark.parametrize("kwargs", [{"block_size": 0}, {"batch_size": 0}, {"max_tokens": 0}])
def test_rejects_bad_arguments(tokens, kwargs):
    args = {"block_size": 16, **kwargs}
    with pytest.raises(ValueError):
        evaluate_perplexity(TinyLM(), tokens, **args)


def test_needs_two_tokens():
    with pytest.raises(ValueError, match="tokens"):
        evaluate_perplexity(TinyLM(), np.zeros(1, dtype=np.uint16), 16)


@pytest.fixture
def tiny_space(monkeypatch):
    """A registered toy space, so that the supernet tests take milliseconds."""
    space = SearchSpace("test-tiny-ppl", (16, 32), (1, 2), (1, 2), (1, 2), head_size=8, block_size=32, vocab_size=64)
    monkeypatch.setitem(SPACES, space.name, space)
    return space


def test_evaluate_archs_matches_extracted_subnets(tiny_space):
    supernet_mod = pytest.importorskip("hwgpt_bench.generation.supernet")
    torch.manual_seed(0)
    supernet = supernet_mod.SuperGPT(tiny_space)
    archs = sample_archs(tiny_space, 3, seed=0)
    tokens = np.random.default_rng(1).integers(0, tiny_space.vocab_size, 70).astype(np.uint16)
    rows = list(evaluate_archs(supernet, archs, tokens, progress=False))
    assert [r["arch_id"] for r in rows] == [a.arch_id for a in archs]
    for row, arch in zip(rows, archs, strict=True):
        direct = evaluate_perplexity(supernet_mod.extract_subnet(supernet, arch), tokens, 32)
        assert row["eval_tokens"] == 69
        assert row["nll"] == pytest.approx(direct.nll, rel=1e-5)
        via_partial = evaluate_perplexity(functools.partial(supernet, arch=arch), tokens, 32)
        assert row["nll"] == via_partial.nll
