"""Held-out perplexity and next-token accuracy of a language model (a ``GPT`` or a supernet subnet).

Windowing: the token stream is cut into windows of ``block_size + 1`` tokens that start every ``block_size`` tokens,
so consecutive windows share only their boundary token (the last target of one window is the first input of the next)
and every token except the very first is predicted exactly once, from the tokens before it in its window (at most
``block_size`` of them; the context restarts at each window). A shorter last window (fewer than ``block_size`` targets
left) is evaluated too, on its own; the mean is weighted by tokens, so its size does not bias the result.

Subsampling: with ``max_tokens`` smaller than the stream, ``max_tokens // block_size`` full windows spread evenly over
the whole stream are scored (window indices ``floor(i * n_windows / k)``), not a prefix: the held-out file holds whole
documents one after another, so a prefix would measure only the first document or two. ``eval_tokens`` reports how
many targets were scored (at most ``max_tokens``). Below one window, the first ``max_tokens + 1`` tokens are used.

Numbers: ``nll`` is the token-weighted mean negative log-likelihood in nats, ``perplexity = exp(nll)``, ``accuracy``
the share of targets that are the top-1 prediction (ties go to the lower token id, as ``argmax`` breaks them).
Computed in float32 under ``torch.inference_mode`` and summed in float64; the same inputs give the same result.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from hwgpt_bench.search_spaces import ArchConfig

ModelFn = Callable[[Tensor], Tensor]  # token ids (B, T) long -> logits (B, T, V)


@dataclass(frozen=True)
class PerplexityResult:
    """Token-weighted evaluation of one model on one token stream.

    Attributes:
        nll: mean negative log-likelihood per predicted token, in nats.
        perplexity: ``exp(nll)``.
        accuracy: share of predicted tokens whose top-1 prediction is right, in [0, 1].
        eval_tokens: number of predicted (target) tokens.
    """

    nll: float
    perplexity: float
    accuracy: float
    eval_tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


def _as_long_tensor(tokens) -> Tensor:
    """``tokens`` (a 1-D array, memmap or tensor) as a 1-D int64 CPU tensor."""
    if isinstance(tokens, Tensor):
        return tokens.to(device="cpu", dtype=torch.long).flatten()
    return torch.from_numpy(np.asarray(tokens, dtype=np.int64).reshape(-1))


def windows(data: Tensor, block_size: int) -> tuple[Tensor, Tensor | None]:
    """``data`` (N,) -> full windows (n_full, block_size + 1) with stride ``block_size``, and the shorter last window
    (L,) with ``2 <= L <= block_size`` or ``None`` when the full windows cover every target."""
    n_targets = data.numel() - 1
    n_full = n_targets // block_size
    full = data[: n_full * block_size + 1].unfold(0, block_size + 1, block_size)  # (n_full, T + 1)
    rest = data[n_full * block_size:] if n_targets % block_size else None  # (L,)
    return full, rest


def select_windows(data: Tensor, block_size: int, max_tokens: int | None) -> tuple[Tensor, Tensor | None]:
    """The windows to score: all of them, or about ``max_tokens`` targets' worth spread evenly (see the module doc)."""
    full, rest = windows(data, block_size)
    if max_tokens is None or max_tokens >= data.numel() - 1:
        return full, rest
    k = min(max_tokens // block_size, full.size(0))
    if k == 0:
        return full[:0], data[: max_tokens + 1]
    return full[(torch.arange(k) * full.size(0)) // k], None  # (k, T + 1)


def _batches(full: Tensor, rest: Tensor | None, batch_size: int) -> Iterator[Tensor]:
    """Windows (b, L) to score: the full ones ``batch_size`` at a time, then the partial last one alone."""
    for start in range(0, full.size(0), batch_size):
        yield full[start:start + batch_size]
    if rest is not None:
        yield rest.unsqueeze(0)


def _score(model_fn: ModelFn, batch: Tensor) -> tuple[float, int, int]:
    """Summed NLL (nats), correct top-1 predictions and target count of one batch of windows (b, L)."""
    x, y = batch[:, :-1], batch[:, 1:]  # (b, L - 1) each
    logits = model_fn(x).float()  # (b, L - 1, V)
    nll = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum")
    correct = (logits.argmax(dim=-1) == y).sum()
    return float(nll.double()), int(correct), y.numel()


def _infer_device(model_fn) -> torch.device:
    """Device of the first parameter of ``model_fn`` (a module, or a ``functools.partial`` of one); else the CPU."""
    target = model_fn.func if isinstance(model_fn, functools.partial) else model_fn
    if isinstance(target, torch.nn.Module):
        param = next(target.parameters(), None)
        if param is not None:
            return param.device
    return torch.device("cpu")


def evaluate_perplexity(model_fn: ModelFn, tokens, block_size: int, batch_size: int = 8,
                        max_tokens: int | None = None, device: torch.device | str | None = None) -> PerplexityResult:
    """Evaluate ``model_fn`` on ``tokens`` (1-D array or tensor of token ids) with windows of ``block_size + 1``.

    ``max_tokens`` caps the number of predicted tokens (whole windows spread over the stream, see the module doc);
    ``batch_size`` is the number of windows per forward pass; ``device`` defaults to that of ``model_fn``'s
    parameters. The model's train/eval mode is left as it is (the project's models have no dropout).
    """
    if block_size < 1 or batch_size < 1:
        raise ValueError(f"block_size/batch_size: must be >= 1, got {block_size}/{batch_size}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens: must be >= 1 or None, got {max_tokens}")
    data = _as_long_tensor(tokens)
    if data.numel() < 2:
        raise ValueError(f"tokens: need at least 2 tokens to predict one, got {data.numel()}")
    device = torch.device(device) if device is not None else _infer_device(model_fn)
    nll_sum, correct, count = 0.0, 0, 0
    with torch.inference_mode():
        for batch in _batches(*select_windows(data, block_size, max_tokens), batch_size):
            s, c, n = _score(model_fn, batch.to(device))
            nll_sum, correct, count = nll_sum + s, correct + c, count + n
    nll = nll_sum / count
    return PerplexityResult(nll=nll, perplexity=math.exp(nll), accuracy=correct / count, eval_tokens=count)


def evaluate_archs(supernet, archs: Iterable[ArchConfig], tokens, block_size: int | None = None,
                   batch_size: int = 8, max_tokens: int | None = None, progress: bool = True) -> Iterator[dict]:
    """Yield ``{"arch_id", "canonical", "nll", "perplexity", "accuracy", "eval_tokens"}`` for each subnet of
    ``supernet`` (a ``SuperGPT``) in ``archs``; ``block_size`` defaults to the supernet space's."""
    block_size = block_size or supernet.space.block_size
    archs = list(archs)
    for arch in tqdm(archs, desc="perplexity", unit="arch", disable=not progress):
        result = evaluate_perplexity(functools.partial(supernet, arch=arch), tokens, block_size, batch_size,
                                     max_tokens)
        yield {"arch_id": arch.arch_id, "canonical": arch.canonical, **result.to_dict()}
