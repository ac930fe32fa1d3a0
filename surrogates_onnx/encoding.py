"""Vectorised encoding of many architectures at once: ``search_spaces.encode`` for arrays, in numpy.

``encode_columns(space, columns)`` takes the architecture fields as columns: ``embed_dim``, ``n_layer`` and ``bias``
of shape ``(N,)``, ``n_head`` and ``mlp_ratio`` as ``(N, max_layers)`` integer arrays zero-padded beyond each row's
``n_layer`` (or as N sequences of per-layer values, or polars list columns), in a dict or a polars / pandas
DataFrame. It checks every value against the space's choices with array operations and returns the same float32
matrix ``(N, 3 + 2 max_layers + 2)`` that ``encode`` gives row by row, bit for bit: the two derived columns are exact
integer counts (int64) divided in float64 as ``encode`` divides Python ints, then cast to float32.

Bad input is a ``ValueError`` naming the column, the first bad row and the allowed values; no value is converted
(a float ``embed_dim`` or an integer ``bias`` are errors, as in ``ArchConfig``). Pure numpy (+ the search spaces).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hwgpt_bench.search_spaces import SearchSpace, feature_names, get_space

COLUMNS = ("embed_dim", "n_layer", "n_head", "mlp_ratio", "bias")


def _column(columns, name: str):
    try:
        return columns[name]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"{name}: column missing; the architecture columns are {', '.join(COLUMNS)}") from None


def _is_polars_list(values) -> bool:
    """A polars Series of lists (checked without importing polars: the runtime does not need it)."""
    return type(values).__module__.startswith("polars") and str(getattr(values, "dtype", "")).startswith("List")


def _as_numpy(values, name: str) -> np.ndarray:
    """A column as a numpy array (polars / pandas series and lists accepted), without converting its dtype."""
    if hasattr(values, "to_numpy"):
        values = values.to_numpy()
    return np.asarray(values)


def _int_vector(values, name: str, allowed: Sequence[int]) -> np.ndarray:
    arr = _as_numpy(values, name)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: expected a 1-d integer column, got dtype {arr.dtype} and shape {arr.shape}; "
                         f"allowed values: {list(allowed)}")
    _check_choices(arr, name, allowed)
    return arr.astype(np.int64)


def _allowed(arr: np.ndarray, allowed: Sequence[int]) -> np.ndarray:
    """Boolean array of ``arr``'s shape: whether each integer value is one of ``allowed`` (a lookup table over the
    allowed range: the choices are a few small integers, and ``np.isin`` sorts)."""
    choices = np.asarray(allowed, dtype=np.int64)
    low, high = int(choices.min()), int(choices.max())
    table = np.zeros(high - low + 1, dtype=bool)
    table[choices - low] = True
    return table[np.clip(arr, low, high) - low] & (arr >= low) & (arr <= high)


def _check_choices(arr: np.ndarray, name: str, allowed: Sequence[int], where: np.ndarray | None = None) -> None:
    bad = ~_allowed(arr, allowed)
    if where is not None:
        bad &= where
    if bad.any():
        index = np.argwhere(bad)[0]
        cell = f"{name}[{', '.join(map(str, index))}]" if arr.ndim > 1 else f"{name}[{index[0]}]"
        raise ValueError(f"{cell}: {arr[tuple(index)].item()!r} is not allowed; allowed values: {list(allowed)}")


def _bias(values) -> np.ndarray:
    arr = _as_numpy(values, "bias")
    if arr.ndim != 1 or arr.dtype != np.bool_:
        raise ValueError(f"bias: expected a 1-d boolean column, got dtype {arr.dtype} and shape {arr.shape}; "
                         "allowed values: [False, True]")
    return arr


def _padded(values, name: str, n_layer: np.ndarray, max_layers: int) -> np.ndarray:
    """``(N, max_layers)`` int64 from a zero-padded 2-d numpy array, or from N per-layer sequences (lists, a
    pandas object column, a polars list column) of exactly ``n_layer`` values each."""
    if _is_polars_list(values):
        lengths = values.list.len().to_numpy()
        flat = values.explode().to_numpy()
        _check_lengths(lengths, n_layer, name)
        if not np.issubdtype(flat.dtype, np.integer):
            raise ValueError(f"{name}: expected integer per-layer values, got dtype {flat.dtype}")
        out = np.zeros((len(n_layer), max_layers), dtype=np.int64)
        out[np.arange(max_layers)[None, :] < n_layer[:, None]] = flat
        return out
    if not isinstance(values, np.ndarray) or values.dtype == object:  # per-row sequences: one small copy per row
        rows = [np.asarray(r) for r in (values.to_numpy() if hasattr(values, "to_numpy") else values)]
        _check_lengths(np.array([len(r) for r in rows]), n_layer, name)
        if any(r.size and not np.issubdtype(r.dtype, np.integer) for r in rows):
            raise ValueError(f"{name}: expected integer per-layer values")
        out = np.zeros((len(rows), max_layers), dtype=np.int64)
        for i, r in enumerate(rows):
            out[i, :r.size] = r
        return out
    arr = values
    if arr.ndim != 2 or arr.shape != (len(n_layer), max_layers) or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{name}: expected an integer array of shape ({len(n_layer)}, {max_layers}) (zero beyond "
                         f"each row's n_layer) or one sequence per row, got dtype {arr.dtype} and shape {arr.shape}")
    beyond = np.arange(max_layers)[None, :] >= n_layer[:, None]
    padding_used = beyond & (arr != 0)
    if padding_used.any():
        row = int(np.argwhere(padding_used)[0][0])
        raise ValueError(f"{name}[{row}]: values beyond n_layer = {n_layer[row]} must be 0 (padding), got "
                         f"{arr[row].tolist()}")
    return arr.astype(np.int64, copy=False)


def _check_lengths(lengths: np.ndarray, n_layer: np.ndarray, name: str) -> None:
    if len(lengths) != len(n_layer):
        raise ValueError(f"{name}: {len(lengths)} rows but n_layer has {len(n_layer)}")
    bad = np.flatnonzero(lengths != n_layer)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name}[{i}]: has {lengths[i]} entries but n_layer is {n_layer[i]}; give one per layer")


def exact_counts(sp: SearchSpace, embed_dim: np.ndarray, n_layer: np.ndarray, n_head: np.ndarray,
                 mlp_ratio: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(num_params, forward_flops at the block size, batch 1)`` as int64 ``(N,)``, the formulas of ``ArchConfig``.

    Every per-layer term is linear in that layer's attention width ``a_i = n_head_i head_size`` or MLP width
    ``h_i = mlp_ratio_i d``, so the sums over layers need only ``A = sum a_i`` and ``H = sum h_i`` (padding layers
    are 0): per layer ``2 norm + 3 (d a_i + b a_i) + (a_i d + b d) + (d h_i + b h_i) + (h_i d + b d)`` sums to
    ``2 norm L + 4 d A + 3 b A + 2 d H + b H + 2 b d L`` (``norm = d (1 + b)``, ``L`` layers). Exact int64, as the
    per-layer sum; two reductions of ``(N, max_layers)`` instead of a dozen products."""
    d, b, layers = embed_dim, bias.astype(np.int64), n_layer
    a_total = n_head.sum(axis=1) * sp.head_size
    h_total = mlp_ratio.sum(axis=1) * d
    norm = d * (1 + b)
    params = (norm * (1 + 2 * layers) + 4 * d * a_total + 3 * b * a_total + 2 * d * h_total + b * h_total
              + 2 * b * d * layers + sp.vocab_size * embed_dim)
    t = sp.block_size
    macs_per_token = sp.vocab_size * embed_dim + 4 * d * a_total + 2 * d * h_total
    flops = 2 * (t * macs_per_token + 2 * t * t * a_total)
    return params, flops


def encode_columns(space: str | SearchSpace, columns: Mapping | object) -> np.ndarray:
    """The float32 encoding ``(N, len(feature_names(space)))`` of N architectures given as columns (see the module
    docstring); row i equals ``encode(ArchConfig(space, ...row i...))``."""
    sp = get_space(space) if isinstance(space, str) else get_space(space.name)
    if "space" in getattr(columns, "columns", columns if isinstance(columns, Mapping) else ()):
        spaces = _as_numpy(_column(columns, "space"), "space")
        if np.any(spaces != sp.name):
            row = int(np.flatnonzero(spaces != sp.name)[0])
            raise ValueError(f"space[{row}]: architecture says {spaces[row]!r} but the model is for {sp.name!r}")
    embed_dim = _int_vector(_column(columns, "embed_dim"), "embed_dim", sp.embed_dims)
    n_layer = _int_vector(_column(columns, "n_layer"), "n_layer", sp.n_layers)
    if len(n_layer) != len(embed_dim):
        raise ValueError(f"n_layer: {len(n_layer)} rows but embed_dim has {len(embed_dim)}")
    bias = _bias(_column(columns, "bias"))
    if len(bias) != len(embed_dim):
        raise ValueError(f"bias: {len(bias)} rows but embed_dim has {len(embed_dim)}")
    if not set(bias.tolist()) <= set(sp.bias_choices):
        raise ValueError(f"bias: allowed values: {list(sp.bias_choices)}")
    live = np.arange(sp.max_layers)[None, :] < n_layer[:, None]
    per_layer = {}
    for name, allowed in (("n_head", sp.n_heads), ("mlp_ratio", sp.mlp_ratios)):
        per_layer[name] = _padded(_column(columns, name), name, n_layer, sp.max_layers)
        _check_choices(per_layer[name], name, allowed, where=live)
    params, flops = exact_counts(sp, embed_dim, n_layer, per_layer["n_head"], per_layer["mlp_ratio"], bias)
    out = np.empty((len(embed_dim), len(feature_names(sp))), dtype=np.float32)
    out[:, 0], out[:, 1], out[:, 2] = embed_dim, n_layer, bias
    out[:, 3:3 + sp.max_layers] = per_layer["n_head"]
    out[:, 3 + sp.max_layers:3 + 2 * sp.max_layers] = per_layer["mlp_ratio"]
    out[:, -2] = params / 1e6
    out[:, -1] = flops / sp.block_size / 1e9
    return out
