"""Search spaces of GPT-2-family architectures and the immutable ``ArchConfig``.

Pure Python (no torch, no numpy) so that the light ONNX runtime can encode architectures too.

An architecture is: one embedding width ``embed_dim``, a layer count ``n_layer`` (the first ``n_layer`` blocks of the
supernet), per-layer head counts ``n_head`` and MLP ratios ``mlp_ratio`` (tuples of length ``n_layer``) and one global
``bias`` flag for every linear and LayerNorm. The attention width of layer i is ``n_head[i] * head_size``, independent
of ``embed_dim`` (as in the original HW-GPT-Bench); the MLP hidden width of layer i is ``mlp_ratio[i] * embed_dim``.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

ARCH_ID_LENGTH = 12  # hex characters of sha256 kept in ``arch_id``; 48 bits, collision-free for millions of archs
GPT2_PADDED_VOCAB = 50304  # GPT-2's 50257 tokens padded to a multiple of 64, as in nanoGPT and the original benchmark
ARCH_FIELDS = ("space", "embed_dim", "n_layer", "n_head", "mlp_ratio", "bias")  # the fields that define an architecture
_CANONICAL = re.compile(r"([^|]+)\|e([0-9]+)\|l([0-9]+)\|h([0-9]+(?:,[0-9]+)*)\|m([0-9]+(?:,[0-9]+)*)\|b([01])")


@dataclass(frozen=True)
class SearchSpace:
    """A GPT-2-family search space: three choices per dimension, per-layer heads and MLP ratios, a bias flag.

    Attributes:
        name: identifier used in every table (``space`` column).
        embed_dims: choices of the global embedding width.
        n_layers: choices of the number of transformer blocks.
        n_heads: choices of the head count, drawn independently per layer.
        mlp_ratios: choices of the MLP expansion ratio, drawn independently per layer.
        head_size: width of one attention head (64 in every GPT-2 space).
        block_size: sequence length the models are built for, in tokens.
        vocab_size: vocabulary size of the token embedding and tied LM head.
        rotary_fraction: fraction of each head's dimensions that RoPE rotates (0.25 as in the original).
        description: one line on where the space comes from.
    """

    name: str
    embed_dims: tuple[int, ...]
    n_layers: tuple[int, ...]
    n_heads: tuple[int, ...]
    mlp_ratios: tuple[int, ...]
    head_size: int = 64
    block_size: int = 1024
    vocab_size: int = GPT2_PADDED_VOCAB
    rotary_fraction: float = 0.25
    description: str = ""
    bias_choices: tuple[bool, ...] = field(default=(False, True))

    @property
    def max_layers(self) -> int:
        """Largest layer count of the space: the width of the per-layer part of the encoding."""
        return max(self.n_layers)

    @property
    def rotary_dims(self) -> int:
        """Number of head dimensions rotated by RoPE (even)."""
        return int(self.head_size * self.rotary_fraction) // 2 * 2

    def smallest(self) -> ArchConfig:
        """The member with the fewest parameters: every dimension at its smallest choice, no bias."""
        n = min(self.n_layers)
        return ArchConfig(self.name, min(self.embed_dims), n, (min(self.n_heads),) * n, (min(self.mlp_ratios),) * n,
                          False)

    def largest(self) -> ArchConfig:
        """The member with the most parameters: every dimension at its largest choice, with bias."""
        n = self.max_layers
        return ArchConfig(self.name, max(self.embed_dims), n, (max(self.n_heads),) * n, (max(self.mlp_ratios),) * n,
                          True)

    def size(self) -> int:
        """Number of distinct architectures in the space."""
        per_layer = len(self.n_heads) * len(self.mlp_ratios)
        return len(self.embed_dims) * len(self.bias_choices) * sum(per_layer**n for n in self.n_layers)

    def to_dict(self) -> dict:
        """JSON-ready description of the space (lists instead of tuples), plus derived facts."""
        out = asdict(self)
        out.update(max_layers=self.max_layers, rotary_dims=self.rotary_dims, n_architectures=self.size(),
                   encoding=feature_names(self))
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


def _space(name, embed, layers, heads, ratios, **kw) -> SearchSpace:
    return SearchSpace(name, tuple(embed), tuple(layers), tuple(heads), tuple(ratios), **kw)


_PAPER = "HW-GPT-Bench (arXiv 2405.10299)"
SPACES: dict[str, SearchSpace] = {
    s.name: s
    for s in (
        _space("gpt-s", (192, 384, 768), (10, 11, 12), (4, 8, 12), (2, 3, 4), description=f"{_PAPER} GPT-S"),
        _space("gpt-m", (256, 512, 1024), (22, 23, 24), (8, 12, 16), (2, 3, 4), description=f"{_PAPER} GPT-M"),
        _space("gpt-l", (320, 640, 1280), (34, 35, 36), (8, 16, 20), (2, 3, 4), description=f"{_PAPER} GPT-L"),
        _space("gpt-s-wide", (192, 384, 768), (3, 6, 12), (4, 8, 12), (1, 2, 4), description=f"{_PAPER} GPT-S-wide"),
        _space("gpt-m-wide", (256, 512, 1024), (6, 12, 24), (4, 8, 16), (1, 2, 4), description=f"{_PAPER} GPT-M-wide"),
        _space("gpt-l-wide", (320, 640, 1280), (9, 18, 36), (5, 10, 20), (1, 2, 4), description=f"{_PAPER} GPT-L-wide"),
        _space("gpt-xl-wide", (400, 800, 1600), (12, 24, 48), (6, 12, 25), (1, 2, 4),
               description="GPT-XL-wide (1.55B largest member), claimed by the paper but never shipped by its code"),
        # CPU-trainable family: same structure at a scale whose supernet trains in about 1-2 h on 2 CPU cores.
        # Head size 32 (so attention width = heads x 32), sequence length 256 and an 8192-token byte-level BPE
        # trained on the project's corpus: a 50k GPT-2 vocabulary would make the LM head >70% of every model's cost.
        _space("gpt-nano", (128, 192, 256), (4, 5, 6), (2, 4, 8), (2, 3, 4), head_size=32, block_size=256,
               vocab_size=8192, description="CPU-trainable family of this project (real perplexity on 2 cores)"),
    )
}


def get_space(name: str) -> SearchSpace:
    """Look a space up by name; a clear ``ValueError`` lists the allowed names."""
    if name not in SPACES:
        raise ValueError(f"space: unknown search space {name!r}; allowed values: {sorted(SPACES)}")
    return SPACES[name]


def _check_choice(field_name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{field_name}: {value!r} is not allowed; allowed values: {list(allowed)}")


def _type_error(field_name: str, value, expected: str, allowed: tuple | None = None) -> ValueError:
    """The error of a value of the wrong type: keeps the ``<field>: <value> is not allowed`` start of a bad choice."""
    tail = f"; allowed values: {list(allowed)}" if allowed is not None else ""
    return ValueError(f"{field_name}: {value!r} is not allowed: expected {expected}, got {value!r} "
                      f"({type(value).__name__}){tail}")


def _numpy():
    """numpy when something already imported it (a numpy value cannot exist otherwise); never imports it."""
    return sys.modules.get("numpy")


def _strict_int(field_name: str, value, allowed: tuple) -> int:
    """``value`` as a Python int when it is a real integer (a JSON integer; numpy integer dtypes too), else an error.

    bool, float (even integral: ``384.0``), str and everything else are refused: ``int()`` would silently turn
    ``384.7`` into 384, ``"10"`` into 10 and ``True`` into 1.
    """
    np = _numpy()
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if np is not None and isinstance(value, np.integer):
        return int(value)
    raise _type_error(field_name, value, "a JSON integer", allowed)


def _strict_bool(field_name: str, value) -> bool:
    """``value`` when it is a real bool (a JSON boolean; ``numpy.bool_`` too), else an error (no truthiness)."""
    np = _numpy()
    if isinstance(value, bool) or (np is not None and isinstance(value, np.bool_)):
        return bool(value)
    raise ValueError(f"{field_name}: {value!r} is not allowed: expected a JSON boolean true/false, got {value!r} "
                     f"({type(value).__name__})")


def _strict_list(field_name: str, value) -> tuple:
    """The entries of a per-layer field: a list or tuple (a 1-D numpy array too), never a str, dict or set."""
    np = _numpy()
    if isinstance(value, (list, tuple)):
        return tuple(value)
    if np is not None and isinstance(value, np.ndarray) and value.ndim == 1:
        return tuple(value)
    raise ValueError(f"{field_name}: {value!r} is not allowed: expected a JSON array of integers (one per layer), "
                     f"got {type(value).__name__}")


@dataclass(frozen=True)
class ArchConfig:
    """One architecture of a search space; immutable, validated, hashable.

    Attributes:
        space: name of the search space (a key of ``SPACES``).
        embed_dim: global embedding width (channels).
        n_layer: number of transformer blocks.
        n_head: heads per layer, length ``n_layer``.
        mlp_ratio: MLP expansion ratio per layer, length ``n_layer``.
        bias: whether every linear layer and LayerNorm has a bias (the LM head never has one).
    """

    space: str
    embed_dim: int
    n_layer: int
    n_head: tuple[int, ...]
    mlp_ratio: tuple[int, ...]
    bias: bool

    def __post_init__(self) -> None:
        """Strict validation: real ints (not bool, float or str) for the sizes, a real bool for ``bias``.

        Values of the right type are then checked against the space's choices. Accepted numpy integers and bools are
        stored as Python ones, the per-layer lists as tuples, so equal architectures compare and hash equal.
        """
        if not isinstance(self.space, str):
            raise _type_error("space", self.space, "a JSON string", tuple(SPACES))
        sp = get_space(self.space)
        set_ = object.__setattr__
        set_(self, "embed_dim", _strict_int("embed_dim", self.embed_dim, sp.embed_dims))
        _check_choice("embed_dim", self.embed_dim, sp.embed_dims)
        set_(self, "n_layer", _strict_int("n_layer", self.n_layer, sp.n_layers))
        _check_choice("n_layer", self.n_layer, sp.n_layers)
        set_(self, "bias", _strict_bool("bias", self.bias))
        _check_choice("bias", self.bias, sp.bias_choices)
        for name, allowed in (("n_head", sp.n_heads), ("mlp_ratio", sp.mlp_ratios)):
            values = _strict_list(name, getattr(self, name))
            if len(values) != self.n_layer:
                raise ValueError(f"{name}: has {len(values)} entries but n_layer is {self.n_layer}; give one per layer")
            values = tuple(_strict_int(f"{name}[{i}]", v, allowed) for i, v in enumerate(values))
            for i, v in enumerate(values):
                _check_choice(f"{name}[{i}]", v, allowed)
            set_(self, name, values)

    @property
    def search_space(self) -> SearchSpace:
        return SPACES[self.space]

    @property
    def canonical(self) -> str:
        """Canonical string: equal architectures give equal strings, and the string alone rebuilds the config."""
        heads = ",".join(map(str, self.n_head))
        ratios = ",".join(map(str, self.mlp_ratio))
        return f"{self.space}|e{self.embed_dim}|l{self.n_layer}|h{heads}|m{ratios}|b{int(self.bias)}"

    @property
    def arch_id(self) -> str:
        """Stable identity: the first 12 hex characters of sha256 of the canonical string."""
        return hashlib.sha256(self.canonical.encode()).hexdigest()[:ARCH_ID_LENGTH]

    @classmethod
    def from_canonical(cls, text: str) -> ArchConfig:
        """Inverse of ``canonical``; strict: decimal digits only and ``b0`` / ``b1`` (``b2`` is not True)."""
        match = _CANONICAL.fullmatch(text) if isinstance(text, str) else None
        if match is None:
            expected = "'space|e<int>|l<int>|h<ints>|m<ints>|b<0/1>'"
            raise ValueError(f"canonical: cannot parse {text!r}; expected {expected}")
        space, e, n, h, m, b = match.groups()
        return cls(space, int(e), int(n), tuple(map(int, h.split(","))), tuple(map(int, m.split(","))), b == "1")

    @classmethod
    def from_dict(cls, d: Mapping) -> ArchConfig:
        """Build from a mapping with the field names (lists allowed), as strictly as the constructor.

        Unknown keys are an error, and no value is converted: ``"bias": "false"`` or ``1``, ``"embed_dim": 384.7``
        or ``"384"`` are errors naming the field and what it accepts (a JSON boolean, a JSON integer).
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"architecture: expected a JSON object with the fields {', '.join(ARCH_FIELDS)}, "
                             f"got {type(d).__name__}")
        allowed = set(ARCH_FIELDS)
        unknown = set(d) - allowed - {"arch_id"}
        if unknown:
            raise ValueError(f"architecture: unknown fields {sorted(map(str, unknown))}; allowed: "
                             f"{', '.join(ARCH_FIELDS)}, arch_id")
        missing = allowed - set(d)
        if missing:
            raise ValueError(f"architecture: missing fields {sorted(missing)}")
        arch = cls(d["space"], d["embed_dim"], d["n_layer"], d["n_head"], d["mlp_ratio"], d["bias"])
        if "arch_id" in d and d["arch_id"] != arch.arch_id:
            raise ValueError(f"arch_id: {d['arch_id']!r} does not match the fields (expected {arch.arch_id!r})")
        return arch

    def to_dict(self) -> dict:
        """Plain dict (lists for the per-layer fields) with ``arch_id``."""
        return {"arch_id": self.arch_id, "space": self.space, "embed_dim": self.embed_dim, "n_layer": self.n_layer,
                "n_head": list(self.n_head), "mlp_ratio": list(self.mlp_ratio), "bias": self.bias}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    # ---- exact counts -------------------------------------------------------------------------------------------
    def attn_width(self, layer: int) -> int:
        """Width of layer ``layer``'s query/key/value projections: ``n_head[layer] * head_size``."""
        return self.n_head[layer] * self.search_space.head_size

    def mlp_width(self, layer: int) -> int:
        """Hidden width of layer ``layer``'s MLP: ``mlp_ratio[layer] * embed_dim``."""
        return self.mlp_ratio[layer] * self.embed_dim

    def num_params(self, include_embedding: bool = True) -> int:
        """Exact parameter count of the standalone model (tied embedding/LM head, RoPE so no position table).

        Per block: two LayerNorms (weight, +bias), q/k/v and output projections, two MLP linears (+biases).
        Then the final LayerNorm and, with ``include_embedding``, the token embedding (vocab x embed_dim), which is
        shared with the LM head and counted once.
        """
        d, b = self.embed_dim, int(self.bias)
        norm = d * (1 + b)
        total = norm  # final LayerNorm
        for i in range(self.n_layer):
            a, h = self.attn_width(i), self.mlp_width(i)
            total += 2 * norm + 3 * (d * a + b * a) + (a * d + b * d) + (d * h + b * h) + (h * d + b * d)
        if include_embedding:
            total += self.search_space.vocab_size * d
        return total

    def forward_flops(self, batch_size: int = 1, seq_len: int | None = None) -> int:
        """Exact matmul FLOPs (2 per multiply-accumulate) of one full-sequence forward, LM head included.

        Counts every linear layer, the attention scores ``Q K^T`` and ``softmax(.) V`` over the full (dense, causally
        masked) ``seq_len x seq_len`` matrix as computed, and the LM head over all positions. Element-wise work
        (norms, softmax, GELU, RoPE) is left out. ``seq_len`` defaults to the space's ``block_size``.
        """
        t = self.search_space.block_size if seq_len is None else seq_len
        d = self.embed_dim
        macs_per_token = self.search_space.vocab_size * d
        attn_macs = 0
        for i in range(self.n_layer):
            a, h = self.attn_width(i), self.mlp_width(i)
            macs_per_token += 4 * d * a + 2 * d * h
            attn_macs += 2 * t * t * a
        return 2 * batch_size * (t * macs_per_token + attn_macs)


# ---- sampling -----------------------------------------------------------------------------------------------------
def random_arch(space: SearchSpace | str, rng: random.Random) -> ArchConfig:
    """Draw one architecture uniformly per dimension (layer count, then per-layer heads and ratios)."""
    sp = get_space(space) if isinstance(space, str) else space
    n = rng.choice(sp.n_layers)
    return ArchConfig(sp.name, rng.choice(sp.embed_dims), n, tuple(rng.choice(sp.n_heads) for _ in range(n)),
                      tuple(rng.choice(sp.mlp_ratios) for _ in range(n)), rng.choice(sp.bias_choices))


def sample_archs(space: SearchSpace | str, n: int, seed: int = 0, include_extremes: bool = True) -> list[ArchConfig]:
    """Seeded sample of ``n`` distinct architectures; the same (space, n, seed) always gives the same list.

    With ``include_extremes`` the smallest and largest members come first. The sample is a prefix-stable stream:
    ``sample_archs(s, n, seed)`` is the first ``n`` entries of ``sample_archs(s, m, seed)`` for any ``m >= n``, so a
    release can grow its counts without changing the architectures already measured.
    """
    sp = get_space(space) if isinstance(space, str) else space
    if n < 0:
        raise ValueError(f"n: must be >= 0, got {n}")
    if n > sp.size():
        raise ValueError(f"n: {n} exceeds the {sp.size()} architectures of space {sp.name!r}")
    rng = random.Random(f"{sp.name}:{seed}")
    out: dict[str, ArchConfig] = {}
    if include_extremes:
        for arch in (sp.smallest(), sp.largest()):
            out.setdefault(arch.arch_id, arch)
    while len(out) < n:
        arch = random_arch(sp, rng)
        out.setdefault(arch.arch_id, arch)
    return list(out.values())[:n]


# ---- fixed-width encoding for surrogates ----------------------------------------------------------------------------
def feature_names(space: SearchSpace | str) -> list[str]:
    """Names of the fixed-width encoding, in order (width ``3 + 2 * max_layers + 2``)."""
    sp = get_space(space) if isinstance(space, str) else space
    per_layer = [f"n_head_{i}" for i in range(sp.max_layers)] + [f"mlp_ratio_{i}" for i in range(sp.max_layers)]
    return ["embed_dim", "n_layer", "bias", *per_layer, "params_millions", "gflops_per_token"]


def encode(arch: ArchConfig) -> list[float]:
    """Fixed-width numeric encoding: globals, per-layer heads and ratios (0 beyond ``n_layer``), two derived sizes.

    ``params_millions`` is ``num_params() / 1e6``; ``gflops_per_token`` is the forward FLOPs at the space's block size
    divided by the block size, in GFLOP. Both are exact functions of the other fields, given to help tree models.
    """
    sp = arch.search_space
    pad = sp.max_layers - arch.n_layer
    heads = list(arch.n_head) + [0] * pad
    ratios = list(arch.mlp_ratio) + [0] * pad
    flops_per_token = arch.forward_flops(1) / sp.block_size / 1e9
    return [arch.embed_dim, arch.n_layer, int(arch.bias), *heads, *ratios, arch.num_params() / 1e6, flops_per_token]


def archs_from_dicts(rows: Iterable[Mapping]) -> list[ArchConfig]:
    """Validate and convert plain dicts (e.g. parquet rows with other columns too) into ``ArchConfig``s.

    Columns other than the architecture fields and ``arch_id`` are ignored (table rows carry sizes, sample seeds);
    the fields themselves are as strict as ``ArchConfig.from_dict``: Python (or numpy integer) ints, real bools.
    """
    return [ArchConfig.from_dict({k: r[k] for k in (*ARCH_FIELDS, "arch_id") if k in r}) for r in rows]
