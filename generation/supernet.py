"""Weight-sharing supernet of a whole ``SearchSpace``: every architecture is a slice of one set of weights.

The parameters are sized for the space's largest values (embedding width D, attention width A = max heads x
head_size, MLP hidden width max ratio x D, ``max_layers`` blocks) with every bias present, under the same module names
as ``model.GPT``. An architecture uses

- the first ``embed_dim`` channels everywhere (embedding columns, LayerNorm entries, linear inputs/outputs);
- the first ``n_layer`` blocks;
- the first ``n_head[i]`` heads of block i: the first ``n_head[i] * head_size`` rows of q/k/v and columns of
  ``attn.proj``;
- the first ``mlp_ratio[i] * embed_dim`` hidden units of block i's MLP;
- the biases (sliced the same way) only when ``arch.bias``.

Every slice is a top-left block of the full tensor, so ``sub_state_dict`` crops each tensor of the standalone model's
state dict from the supernet's, and ``extract_subnet(sn, arch)(idx)`` equals ``sn(idx, arch)``.
Checkpoints are safetensors files with the space in the metadata; nothing is pickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from hwgpt_bench.files import atomic_output
from hwgpt_bench.search_spaces import SPACES, ArchConfig, SearchSpace, get_space

from .model import (
    GPT,
    Block,
    build_rope_cache,
    causal_attention,
    init_weights,
    merge_heads,
    rope_heads,
    split_heads,
)

CHECKPOINT_FORMAT = "hwgpt-bench-supernet/1"  # ``format`` entry of the safetensors metadata


def _linear(layer: nn.Linear, x: Tensor, n_out: int, n_in: int, bias: bool) -> Tensor:
    """``x`` (..., n_in) -> (..., n_out) through the top-left (n_out, n_in) block of ``layer`` (and its bias)."""
    return F.linear(x, layer.weight[:n_out, :n_in], layer.bias[:n_out] if bias else None)


def _layer_norm(norm: nn.LayerNorm, x: Tensor, bias: bool) -> Tensor:
    """LayerNorm over the last dimension d of ``x`` (..., d) with the first d entries of ``norm``'s weight/bias."""
    d = x.size(-1)
    return F.layer_norm(x, (d,), norm.weight[:d], norm.bias[:d] if bias else None, norm.eps)


def _check_member(space: SearchSpace, arch: ArchConfig) -> None:
    """Raise ``ValueError`` unless ``arch`` is an architecture of ``space``."""
    if arch.space != space.name:
        raise ValueError(f"arch: belongs to space {arch.space!r}, but the supernet is of space {space.name!r}")
    own = arch.search_space
    fixed = ("head_size", "block_size", "vocab_size", "rotary_fraction")
    if any(getattr(own, f) != getattr(space, f) for f in fixed):
        raise ValueError(f"arch: space {arch.space!r} in the registry differs from the supernet's in one of {fixed}")
    checks = [("embed_dim", arch.embed_dim, space.embed_dims), ("n_layer", arch.n_layer, space.n_layers),
              ("bias", arch.bias, space.bias_choices)]
    checks += [(f"n_head[{i}]", h, space.n_heads) for i, h in enumerate(arch.n_head)]
    checks += [(f"mlp_ratio[{i}]", r, space.mlp_ratios) for i, r in enumerate(arch.mlp_ratio)]
    for name, value, allowed in checks:
        if value not in allowed:
            raise ValueError(f"arch: {name}={value!r} is not a choice of the supernet's space {list(allowed)}")


class SuperGPT(nn.Module):
    """Supernet of ``space``: ``forward(idx, arch)`` runs architecture ``arch`` on its slice of the shared weights.

    Initialised like ``GPT`` (nanoGPT, residual projections scaled for ``max_layers``) from torch's global RNG;
    seed it with ``torch.manual_seed`` for reproducible training.
    """

    def __init__(self, space: SearchSpace | str) -> None:
        super().__init__()
        self.space = get_space(space) if isinstance(space, str) else space
        sp = self.space
        d_max = max(sp.embed_dims)
        self.wte = nn.Embedding(sp.vocab_size, d_max)
        self.blocks = nn.ModuleList(
            Block(d_max, max(sp.n_heads), sp.head_size, max(sp.mlp_ratios) * d_max, bias=True)
            for _ in range(sp.max_layers)
        )
        self.ln_f = nn.LayerNorm(d_max, bias=True)
        self.active_arch: ArchConfig | None = None
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        init_weights(self, sp.max_layers)
        self.reset_rope_cache()

    def reset_rope_cache(self) -> None:
        """(Re)compute the RoPE table (block_size, R) on the parameters' device."""
        self.rope_cos, self.rope_sin = build_rope_cache(self.space.block_size, self.space.rotary_dims,
                                                        self.wte.weight.device)

    def activate(self, arch: ArchConfig) -> None:
        """Make ``arch`` the subnet that ``forward`` runs when it is given no ``arch``."""
        _check_member(self.space, arch)
        self.active_arch = arch

    def forward(self, idx: Tensor, arch: ArchConfig | None = None) -> Tensor:
        """Token ids ``idx`` (B, T) -> logits (B, T, V) of ``arch`` (default: the active subnet)."""
        arch = self._resolve(arch)
        t = idx.size(1)
        if t > self.space.block_size:
            raise ValueError(f"idx: sequence length {t} exceeds the block size {self.space.block_size}")
        d = arch.embed_dim
        x = F.embedding(idx, self.wte.weight[:, :d])  # (B, T, C)
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]  # (T, R)
        for i in range(arch.n_layer):
            x = self._block(i, x, arch, cos, sin)  # (B, T, C)
        x = _layer_norm(self.ln_f, x, arch.bias)
        return F.linear(x, self.wte.weight[:, :d])  # (B, T, V), tied LM head

    def _resolve(self, arch: ArchConfig | None) -> ArchConfig:
        if arch is None:
            if self.active_arch is None:
                raise ValueError("arch: no subnet is active; call activate(arch) or pass arch to forward")
            return self.active_arch
        _check_member(self.space, arch)
        return arch

    def _block(self, i: int, x: Tensor, arch: ArchConfig, cos: Tensor, sin: Tensor) -> Tensor:
        """Block ``i`` of ``arch`` on ``x`` (B, T, C), parallel residual as in ``model.Block``."""
        block = self.blocks[i]
        attn = self._attention(i, _layer_norm(block.norm_1, x, arch.bias), arch, cos, sin)
        mlp = self._mlp(i, _layer_norm(block.norm_2, x, arch.bias), arch)
        return x + attn + mlp

    def _attention(self, i: int, x: Tensor, arch: ArchConfig, cos: Tensor, sin: Tensor) -> Tensor:
        """Causal self-attention of block ``i`` with its first ``n_head[i]`` heads: (B, T, C) -> (B, T, C)."""
        attn, d, a, n_head = self.blocks[i].attn, arch.embed_dim, arch.attn_width(i), arch.n_head[i]
        q = rope_heads(split_heads(_linear(attn.q, x, a, d, arch.bias), n_head), cos, sin)  # (B, H, T, S)
        k = rope_heads(split_heads(_linear(attn.k, x, a, d, arch.bias), n_head), cos, sin)  # (B, H, T, S)
        v = split_heads(_linear(attn.v, x, a, d, arch.bias), n_head)  # (B, H, T, S)
        y = merge_heads(causal_attention(q, k, v))  # (B, T, A)
        return _linear(attn.proj, y, d, a, arch.bias)

    def _mlp(self, i: int, x: Tensor, arch: ArchConfig) -> Tensor:
        """MLP of block ``i`` with its first ``mlp_ratio[i] * embed_dim`` hidden units: (B, T, C) -> (B, T, C)."""
        mlp, d, hidden = self.blocks[i].mlp, arch.embed_dim, arch.mlp_width(i)
        h = F.gelu(_linear(mlp.fc, x, hidden, d, arch.bias), approximate="tanh")  # (B, T, M)
        return _linear(mlp.proj, h, d, hidden, arch.bias)

    def sub_state_dict(self, arch: ArchConfig) -> dict[str, Tensor]:
        """The weights of ``arch`` under ``GPT``'s parameter names: cloned, contiguous, detached copies."""
        _check_member(self.space, arch)
        with torch.device("meta"):
            shapes = {name: t.shape for name, t in GPT(arch).state_dict().items()}
        full = self.state_dict()
        return {name: _crop(full[name], shape) for name, shape in shapes.items()}


def _crop(tensor: Tensor, shape: torch.Size) -> Tensor:
    """Contiguous copy of the top-left block of ``tensor`` with ``shape``."""
    view = tensor[tuple(slice(0, n) for n in shape)]
    return view.detach().clone(memory_format=torch.contiguous_format)


def extract_subnet(supernet: SuperGPT, arch: ArchConfig) -> GPT:
    """A standalone ``GPT`` of ``arch`` holding copies of its supernet weights (same device/dtype), in eval mode."""
    state = supernet.sub_state_dict(arch)
    with torch.device("meta"):
        model = GPT(arch)
    model.load_state_dict(state, strict=True, assign=True)
    model.reset_rope_cache()
    return model.eval()


# ---- safetensors checkpoints ---------------------------------------------------------------------------------------
def _space_to_json(space: SearchSpace) -> str:
    return json.dumps(asdict(space), sort_keys=True)


def _space_from_json(text: str) -> SearchSpace:
    raw = json.loads(text)
    return SearchSpace(**{f.name: tuple(raw[f.name]) if isinstance(raw[f.name], list) else raw[f.name]
                          for f in fields(SearchSpace)})


def save_supernet(supernet: SuperGPT, path: str | os.PathLike) -> None:
    """Write the supernet's weights to a safetensors file (atomically); the space goes into the metadata."""
    path = Path(path)
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in supernet.state_dict().items()}
    metadata = {"format": CHECKPOINT_FORMAT, "space": supernet.space.name,
                "space_json": _space_to_json(supernet.space)}
    with atomic_output(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def _checkpoint_space(metadata: dict[str, str], space: SearchSpace | str | None) -> SearchSpace:
    """The space of a checkpoint: ``space`` if given (its name must match), else the registry's, else the stored one."""
    stored = metadata.get("space")
    if metadata.get("format") != CHECKPOINT_FORMAT or stored is None:
        raise ValueError(f"checkpoint: not a supernet checkpoint (format {metadata.get('format')!r})")
    if space is not None:
        chosen = get_space(space) if isinstance(space, str) else space
        if chosen.name != stored:
            raise ValueError(f"space: checkpoint is of space {stored!r}, not {chosen.name!r}")
        return chosen
    return SPACES[stored] if stored in SPACES else _space_from_json(metadata["space_json"])


def load_supernet(path: str | os.PathLike, space: SearchSpace | str | None = None,
                  device: torch.device | str = "cpu") -> SuperGPT:
    """Read a checkpoint written by ``save_supernet``; ``space`` defaults to the one named in its metadata."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    sp = _checkpoint_space(metadata, space)
    tensors = load_file(path, device=str(device))
    with torch.device("meta"):
        supernet = SuperGPT(sp)
    supernet.load_state_dict(tensors, strict=True, assign=True)
    supernet.reset_rope_cache()
    return supernet
