"""A standalone GPT-2-family language model of one ``ArchConfig`` (nanoGPT style), with a KV cache for decoding.

The structure follows the original HW-GPT-Bench (built on litgpt):

- token embedding ``wte`` and no position table: RoPE (GPT-NeoX "rotate half") rotates the first
  ``space.rotary_dims`` dimensions of every query and key head;
- ``n_layer`` blocks with a parallel residual ``x = x + attn(norm_1(x)) + mlp(norm_2(x))``; the attention width of
  layer i is ``n_head[i] * head_size`` (independent of ``embed_dim``), the MLP hidden width ``mlp_ratio[i] * embed_dim``
  with a tanh-approximated GELU;
- a final LayerNorm ``ln_f`` and an LM head tied to ``wte`` (no separate parameter, no bias).

One global ``bias`` flag switches the biases of every linear layer and LayerNorm. The supernet
(``supernet.SuperGPT``) uses the same module names, so a sliced supernet state dict loads into ``GPT`` as is.

Shape letters: B batch, T tokens, C ``embed_dim``, A attention width, H heads, S ``head_size``, V vocabulary,
R rotary dimensions, M hidden width of the MLP.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from hwgpt_bench.search_spaces import ArchConfig

ROPE_BASE = 10_000  # RoPE frequency base, as in GPT-NeoX and litgpt
INIT_STD = 0.02  # std of the normal initialisation of embeddings and linear weights (GPT-2 / nanoGPT)
#: N(0, 1) values in the seeded table that ``init_weights_tiled`` fills timed models from: 512 KiB with its copy, so
#: the table fits in the heap that the forward reuses and never raises a process's peak resident set
TILE_VALUES = 1 << 16


# ---- shared functional pieces (also used by the supernet) ------------------------------------------------------------
def build_rope_cache(seq_len: int, n_elem: int, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """RoPE cosines and sines for positions ``0 .. seq_len - 1``, each (seq_len, n_elem) float32.

    litgpt layout: the ``n_elem / 2`` frequencies are repeated twice along the last dimension, matching
    ``rotate_half``'s split of the rotated dimensions into two halves.
    """
    freqs = 1.0 / ROPE_BASE ** (torch.arange(0, n_elem, 2, device=device, dtype=torch.float32) / n_elem)  # (R/2,)
    positions = torch.arange(seq_len, device=device, dtype=torch.float32)  # (T,)
    angles = torch.outer(positions, freqs).repeat(1, 2)  # (T, R)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` (..., T, R) by the angles whose cosines/sines are ``cos``/``sin`` (T, R): rotate-half RoPE."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]  # (..., T, R/2) each
    rotated = torch.cat((-x2, x1), dim=-1)  # (..., T, R)
    return x * cos + rotated * sin


def rope_heads(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Apply RoPE to the first ``R = cos.size(-1)`` dimensions of every head of ``x`` (B, H, T, S); rest unchanged."""
    n_elem = cos.size(-1)
    if n_elem == 0:
        return x
    roped = apply_rope(x[..., :n_elem], cos.to(x.dtype), sin.to(x.dtype))  # (B, H, T, R)
    return torch.cat((roped, x[..., n_elem:]), dim=-1)  # (B, H, T, S)


def split_heads(x: Tensor, n_head: int) -> Tensor:
    """(B, T, A) -> (B, H, T, S) with ``A = H * S``."""
    b, t, a = x.shape
    return x.view(b, t, n_head, a // n_head).transpose(1, 2)


def merge_heads(y: Tensor) -> Tensor:
    """(B, H, T, S) -> (B, T, H * S)."""
    b, h, t, s = y.shape
    return y.transpose(1, 2).reshape(b, t, h * s)


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal scaled dot-product attention of ``T_q`` new queries over ``T_k >= T_q`` keys; returns (B, H, T_q, S).

    ``q`` (B, H, T_q, S) holds the last ``T_q`` positions of the sequence, ``k``/``v`` (B, H, T_k, S) all of its
    positions ``0 .. T_k - 1``; query i (at position ``T_k - T_q + i``) attends to keys ``0 .. T_k - T_q + i``.
    """
    t_q, t_k = q.size(-2), k.size(-2)
    if t_q == t_k:  # full sequence or prefill
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if t_q == 1:  # one decode step: the new token sees every cached position
        return F.scaled_dot_product_attention(q, k, v)
    q_pos = torch.arange(t_k - t_q, t_k, device=q.device)  # (T_q,)
    mask = q_pos[:, None] >= torch.arange(t_k, device=q.device)[None, :]  # (T_q, T_k), True = may attend
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _init_modules(model: nn.Module, n_layer: int, fill_normal: Callable[[Tensor, float], None]) -> None:
    """nanoGPT's scheme, in place, in module order: ``fill_normal(weight, std)`` for embedding and linear weights
    (std 0.02; residual projections ``*.proj`` 0.02 / sqrt(2 n_layer)); biases 0; LayerNorm weights 1."""
    proj_std = INIT_STD / math.sqrt(2 * n_layer)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                fill_normal(module.weight, proj_std if name.endswith("proj") else INIT_STD)
            elif isinstance(module, nn.LayerNorm) and module.weight is not None:
                module.weight.fill_(1.0)
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()


def init_weights(model: nn.Module, n_layer: int, generator: torch.Generator | None = None) -> None:
    """nanoGPT initialisation, in place, in module order (what training starts from).

    Embedding and linear weights ~ N(0, 0.02) i.i.d.; residual projections (``*.proj``) ~ N(0, 0.02 / sqrt(2
    n_layer)); biases 0; LayerNorm weights 1. ``generator`` makes it deterministic (it must live on the parameters'
    device).
    """
    _init_modules(model, n_layer, lambda weight, std: nn.init.normal_(weight, 0.0, std, generator=generator))


def init_weights_tiled(model: nn.Module, n_layer: int, seed: int) -> None:
    """The same scheme as ``init_weights`` at a tenth of its cost, for models that are timed, not trained.

    One table of ``TILE_VALUES`` N(0, 1) values is drawn from ``torch.Generator().manual_seed(seed)``; each weight is
    filled, in module order, with consecutive table values from an offset drawn from the same generator (wrapping
    around the table), times its std. Every value is an N(0, std) draw (normal floats, as i.i.d. draws are), so a
    CPU's arithmetic runs as on i.i.d. weights, but values repeat every ``TILE_VALUES``: the cost of a forward does
    not depend on that, a model's quality would. Drawing 124 M i.i.d. normals took 0.8 s on a 2-core host, longer than
    five forwards of a median gpt-s architecture; the tiled fill takes a memory copy. Deterministic in ``seed``.
    """
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(TILE_VALUES, generator=generator)
    table = torch.cat([table, table])  # any window of <= TILE_VALUES values from an offset < TILE_VALUES is contiguous

    window = torch.empty(TILE_VALUES)  # one buffer for every weight's scaled window (no temporaries per weight)

    def fill(weight: Tensor, std: float) -> None:
        flat = weight.view(-1)
        start = int(torch.randint(TILE_VALUES, (1,), generator=generator))
        torch.mul(table[start:start + TILE_VALUES], std, out=window)  # scaled once: one pass over the weight
        whole, rest = divmod(flat.numel(), TILE_VALUES)
        flat[:whole * TILE_VALUES].view(whole, TILE_VALUES).copy_(window.expand(whole, TILE_VALUES))
        flat[whole * TILE_VALUES:].copy_(window[:rest])

    _init_modules(model, n_layer, fill)


# ---- modules -----------------------------------------------------------------------------------------------------
class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate q/k/v projections and RoPE on queries and keys."""

    def __init__(self, embed_dim: int, n_head: int, head_size: int, bias: bool) -> None:
        super().__init__()
        self.n_head = n_head
        self.head_size = head_size
        width = n_head * head_size
        self.q = nn.Linear(embed_dim, width, bias=bias)
        self.k = nn.Linear(embed_dim, width, bias=bias)
        self.v = nn.Linear(embed_dim, width, bias=bias)
        self.proj = nn.Linear(width, embed_dim, bias=bias)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, kv_cache: tuple[Tensor, Tensor] | None = None,
                start_pos: int = 0) -> Tensor:
        """``x`` (B, T, C) at positions ``start_pos ..`` -> (B, T, C); ``cos``/``sin`` (T, R) of those positions.

        With ``kv_cache`` (two tensors (B, H, max_seq_len, S)) the new keys/values are written at
        ``[start_pos, start_pos + T)`` and the queries attend over ``[0, start_pos + T)``.
        """
        q = rope_heads(split_heads(self.q(x), self.n_head), cos, sin)  # (B, H, T, S)
        k = rope_heads(split_heads(self.k(x), self.n_head), cos, sin)  # (B, H, T, S)
        v = split_heads(self.v(x), self.n_head)  # (B, H, T, S)
        if kv_cache is not None:
            k, v = _update_cache(kv_cache, k, v, start_pos)  # (B, H, start_pos + T, S) each
        return self.proj(merge_heads(causal_attention(q, k, v)))  # (B, T, C)


def _update_cache(kv_cache: tuple[Tensor, Tensor], k: Tensor, v: Tensor, start_pos: int) -> tuple[Tensor, Tensor]:
    """Write ``k``/``v`` (B, H, T, S) at ``[start_pos, start_pos + T)``; return the filled prefix of the cache."""
    end = start_pos + k.size(-2)
    k_cache, v_cache = kv_cache
    k_cache[:, :, start_pos:end] = k
    v_cache[:, :, start_pos:end] = v
    return k_cache[:, :, :end], v_cache[:, :, :end]


class MLP(nn.Module):
    """Two linear layers with a tanh-approximated GELU in between: C -> M -> C."""

    def __init__(self, embed_dim: int, hidden: int, bias: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(embed_dim, hidden, bias=bias)
        self.proj = nn.Linear(hidden, embed_dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, C) -> (B, T, C)."""
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    """Transformer block with a parallel residual: ``x + attn(norm_1(x)) + mlp(norm_2(x))``."""

    def __init__(self, embed_dim: int, n_head: int, head_size: int, mlp_hidden: int, bias: bool) -> None:
        super().__init__()
        self.norm_1 = nn.LayerNorm(embed_dim, bias=bias)
        self.norm_2 = nn.LayerNorm(embed_dim, bias=bias)
        self.attn = CausalSelfAttention(embed_dim, n_head, head_size, bias)
        self.mlp = MLP(embed_dim, mlp_hidden, bias)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, kv_cache: tuple[Tensor, Tensor] | None = None,
                start_pos: int = 0) -> Tensor:
        """(B, T, C) -> (B, T, C); see ``CausalSelfAttention.forward`` for the cache arguments."""
        return x + self.attn(self.norm_1(x), cos, sin, kv_cache, start_pos) + self.mlp(self.norm_2(x))


@dataclass(eq=False)
class KVCache:
    """Keys and values of every layer, each (B, n_head[i], max_seq_len, head_size), filled by ``GPT.forward_cached``.

    The cache does not track how far it is filled: the caller passes ``start_pos`` to every ``forward_cached`` call.
    """

    keys: list[Tensor]
    values: list[Tensor]

    @property
    def n_layer(self) -> int:
        return len(self.keys)

    @property
    def batch_size(self) -> int:
        return self.keys[0].size(0)

    @property
    def max_seq_len(self) -> int:
        """Number of positions the cache can hold, in tokens."""
        return self.keys[0].size(2)

    @property
    def nbytes(self) -> int:
        """Memory held by the cache, in bytes."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


class GPT(nn.Module):
    """GPT-2-family language model of one architecture; ``forward(idx)`` gives next-token logits.

    Parameters: exactly ``arch.num_params()`` (the LM head reuses ``wte.weight``). Non-persistent buffers
    ``rope_cos``/``rope_sin`` (block_size, R) hold the RoPE table and are not part of the state dict.
    ``GPT(arch)`` keeps PyTorch's default initialisation; ``build_model`` gives the seeded nanoGPT one.
    """

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__()
        self.arch = arch
        space = arch.search_space
        self.wte = nn.Embedding(space.vocab_size, arch.embed_dim)
        self.blocks = nn.ModuleList(
            Block(arch.embed_dim, arch.n_head[i], space.head_size, arch.mlp_width(i), arch.bias)
            for i in range(arch.n_layer)
        )
        self.ln_f = nn.LayerNorm(arch.embed_dim, bias=arch.bias)
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.reset_rope_cache()

    @property
    def block_size(self) -> int:
        """Longest sequence the model accepts, in tokens."""
        return self.arch.search_space.block_size

    def reset_rope_cache(self) -> None:
        """(Re)compute the RoPE table on the parameters' device, e.g. after ``to_empty`` or loading with ``assign``."""
        space = self.arch.search_space
        self.rope_cos, self.rope_sin = build_rope_cache(space.block_size, space.rotary_dims, self.wte.weight.device)

    def forward(self, idx: Tensor) -> Tensor:
        """Token ids ``idx`` (B, T) with ``T <= block_size`` -> logits (B, T, V)."""
        t = idx.size(1)
        if t > self.block_size:
            raise ValueError(f"idx: sequence length {t} exceeds the block size {self.block_size}")
        x = self.wte(idx)  # (B, T, C)
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]  # (T, R)
        for block in self.blocks:
            x = block(x, cos, sin)  # (B, T, C)
        return self._lm_head(x)

    def new_kv_cache(self, batch_size: int, max_seq_len: int, device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None) -> KVCache:
        """A zero-filled cache for ``batch_size`` sequences of up to ``max_seq_len <= block_size`` tokens.

        ``device`` and ``dtype`` default to those of the model's parameters.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        if not 1 <= max_seq_len <= self.block_size:
            raise ValueError(f"max_seq_len: must be in [1, {self.block_size}] (the block size), got {max_seq_len}")
        device = self.wte.weight.device if device is None else device
        dtype = self.wte.weight.dtype if dtype is None else dtype
        shapes = [(batch_size, b.attn.n_head, max_seq_len, b.attn.head_size) for b in self.blocks]
        return KVCache([torch.zeros(s, device=device, dtype=dtype) for s in shapes],
                       [torch.zeros(s, device=device, dtype=dtype) for s in shapes])

    def forward_cached(self, idx: Tensor, cache: KVCache, start_pos: int) -> Tensor:
        """New tokens ``idx`` (B, T_new) at positions ``[start_pos, start_pos + T_new)`` -> logits (B, T_new, V).

        Writes their keys/values into ``cache`` and attends over positions ``[0, start_pos + T_new)``, so positions
        before ``start_pos`` must already be in the cache. Prefill: ``start_pos=0``; decode: one token at a time.
        """
        t_new = idx.size(1)
        self._check_cache(cache, idx.size(0), start_pos, t_new)
        x = self.wte(idx)  # (B, T_new, C)
        cos = self.rope_cos[start_pos:start_pos + t_new]  # (T_new, R)
        sin = self.rope_sin[start_pos:start_pos + t_new]
        for block, k_cache, v_cache in zip(self.blocks, cache.keys, cache.values, strict=True):
            x = block(x, cos, sin, (k_cache, v_cache), start_pos)  # (B, T_new, C)
        return self._lm_head(x)

    def _check_cache(self, cache: KVCache, batch_size: int, start_pos: int, t_new: int) -> None:
        if cache.n_layer != len(self.blocks):
            raise ValueError(f"cache: has {cache.n_layer} layers but the model has {len(self.blocks)}")
        if cache.batch_size != batch_size:
            raise ValueError(f"idx: batch size {batch_size} does not match the cache's {cache.batch_size}")
        if start_pos < 0 or start_pos + t_new > cache.max_seq_len:
            raise ValueError(f"start_pos: positions [{start_pos}, {start_pos + t_new}) do not fit in a cache of "
                             f"{cache.max_seq_len} positions")

    def _lm_head(self, x: Tensor) -> Tensor:
        """Final LayerNorm and tied LM head: (B, T, C) -> (B, T, V)."""
        return F.linear(self.ln_f(x), self.wte.weight)


def build_model(arch: ArchConfig, seed: int = 0, device: torch.device | str = "cpu") -> GPT:
    """A randomly initialised ``GPT`` of ``arch`` in eval mode; the same ``seed`` always gives the same weights.

    The weights are filled on the CPU from a seeded table (``init_weights_tiled``: nanoGPT's scheme, each value
    N(0, std), at a tenth of the cost of i.i.d. draws) and then moved to ``device``, so they do not depend on the
    device either. These models are timed and measured, never trained (training starts from ``init_weights``).
    """
    with torch.device("meta"):
        model = GPT(arch)  # no memory and no wasted default initialisation
    model.to_empty(device="cpu")
    init_weights_tiled(model, arch.n_layer, seed)
    model.reset_rope_cache()
    return model.to(device).eval()
