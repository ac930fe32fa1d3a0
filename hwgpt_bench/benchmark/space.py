"""A search space as the configuration spaces that optimisers take, and back to ``ArchConfig`` exactly.

A configuration is a flat dict: ``embed_dim``, ``n_layer``, ``n_head_<i>`` and ``mlp_ratio_<i>`` for every layer
``i`` below the space's largest layer count, and ``bias``. The per-layer keys of layers at or beyond ``n_layer`` are
**inactive**: ConfigSpace leaves them out (its conditions say so), optuna never asks for them, while syne-tune and
pymoo always carry a value; ``from_config`` accepts them (each must still be one of its allowed values) and ignores
them. Everything else is strict: a missing active key, an unknown key or a value outside the choices is a
``ValueError`` naming the key and its allowed values, never a silently different architecture.

Vectors (pymoo): one integer per configuration key, in ``config_keys`` order, the index of the value among the key's
choices (``domains``); inactive positions are ignored on the way back and 0 on the way out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hwgpt_bench.search_spaces import ArchConfig, SearchSpace, get_space


def _space(space: SearchSpace | str) -> SearchSpace:
    return get_space(space) if isinstance(space, str) else space


def domains(space: SearchSpace | str) -> dict[str, tuple]:
    """Every configuration key and its choices, in ``config_keys`` order (plain tuples: optuna, syne-tune)."""
    sp = _space(space)
    keys: dict[str, tuple] = {"embed_dim": tuple(sp.embed_dims), "n_layer": tuple(sp.n_layers)}
    keys.update({f"n_head_{i}": tuple(sp.n_heads) for i in range(sp.max_layers)})
    keys.update({f"mlp_ratio_{i}": tuple(sp.mlp_ratios) for i in range(sp.max_layers)})
    keys["bias"] = tuple(sp.bias_choices)
    return keys


def config_keys(space: SearchSpace | str) -> list[str]:
    """The configuration keys of ``space`` in a fixed order (the order of vectors)."""
    return list(domains(space))


def layer_of(key: str) -> int | None:
    """The layer index of a per-layer key (``n_head_3`` -> 3); None for the global keys."""
    prefix, _, index = key.rpartition("_")
    return int(index) if prefix in ("n_head", "mlp_ratio") and index.isdigit() else None


def is_active(key: str, n_layer: int) -> bool:
    """Whether ``key`` defines part of an architecture with ``n_layer`` layers."""
    layer = layer_of(key)
    return layer is None or layer < n_layer


def to_config(arch: ArchConfig) -> dict:
    """The configuration of ``arch``: its active keys only (``from_config`` gives ``arch`` back)."""
    config: dict = {"embed_dim": arch.embed_dim, "n_layer": arch.n_layer}
    config.update({f"n_head_{i}": h for i, h in enumerate(arch.n_head)})
    config.update({f"mlp_ratio_{i}": r for i, r in enumerate(arch.mlp_ratio)})
    config["bias"] = arch.bias
    return config


def _allowed(key: str, choices: tuple) -> str:
    return f"{key}: allowed values {list(choices)}"


def _value(config: Mapping, key: str, choices: tuple):
    """``config[key]`` checked against ``choices`` by value and type (``True`` is not 1; numpy ints are ints)."""
    value = config[key]
    if isinstance(value, np.generic):
        value = value.item()
    ok = any(value == c and type(value) is type(c) for c in choices)
    if not ok:
        raise ValueError(f"{_allowed(key, choices)}, got {value!r}")
    return value


def from_config(config: Mapping, space: SearchSpace | str) -> ArchConfig:
    """The ``ArchConfig`` of a configuration of ``space`` (strict, see the module docstring)."""
    sp = _space(space)
    if not isinstance(config, Mapping):
        raise ValueError(f"configuration: expected a mapping of {config_keys(sp)}, got {type(config).__name__}")
    keys = domains(sp)
    unknown = sorted(str(k) for k in config if k not in keys)
    if unknown:
        raise ValueError(f"configuration: unknown key(s) {unknown} for space {sp.name}; allowed: {list(keys)}")
    for key in ("embed_dim", "n_layer", "bias"):
        if key not in config:
            raise ValueError(f"configuration: missing key {key!r} ({_allowed(key, keys[key])})")
    n_layer = _value(config, "n_layer", keys["n_layer"])
    values = {}
    for key, choices in keys.items():
        if key in config:
            values[key] = _value(config, key, choices)
        elif is_active(key, n_layer):
            raise ValueError(f"configuration: missing key {key!r}, active with n_layer={n_layer} "
                             f"({_allowed(key, choices)})")
    return ArchConfig(sp.name, values["embed_dim"], n_layer, tuple(values[f"n_head_{i}"] for i in range(n_layer)),
                      tuple(values[f"mlp_ratio_{i}"] for i in range(n_layer)), values["bias"])


# ---- integer vectors (pymoo) -------------------------------------------------------------------------------------
def vector_bounds(space: SearchSpace | str) -> tuple[np.ndarray, np.ndarray]:
    """Lower (all 0) and upper (number of choices - 1) bounds of the vectors, each of shape ``(n_keys,)``."""
    sizes = np.array([len(c) for c in domains(space).values()])
    return np.zeros(len(sizes), dtype=int), sizes - 1


def to_vector(arch: ArchConfig) -> np.ndarray:
    """Choice indices of ``arch``'s configuration, shape ``(n_keys,)``; inactive positions are 0."""
    keys = domains(arch.space)
    config = to_config(arch)
    return np.array([choices.index(config[key]) if key in config else 0 for key, choices in keys.items()])


def from_vectors(vectors: np.ndarray | Sequence[Sequence[int]], space: SearchSpace | str) -> list[ArchConfig]:
    """The architectures of integer vectors of shape ``(N, n_keys)`` (inactive positions ignored).

    Entries must be integral and within ``vector_bounds``; otherwise a ``ValueError`` names the key and its range.
    """
    sp = _space(space)
    keys = domains(sp)
    x = np.asarray(vectors)
    if x.ndim != 2 or x.shape[1] != len(keys):
        raise ValueError(f"vectors: expected shape (N, {len(keys)}) for space {sp.name}, got {x.shape}")
    if not np.all(np.equal(np.mod(x, 1), 0)):
        raise ValueError("vectors: entries must be integral choice indices")
    x = x.astype(int)
    _, upper = vector_bounds(sp)
    bad = np.flatnonzero(((x < 0) | (x > upper)).any(axis=0))
    if bad.size:
        key = list(keys)[bad[0]]
        raise ValueError(f"vectors: {key} index must be in [0, {upper[bad[0]]}] (choices {list(keys[key])})")
    choices = list(keys.values())
    return [from_config({k: choices[j][row[j]] for j, k in enumerate(keys)}, sp) for row in x]


# ---- ConfigSpace ---------------------------------------------------------------------------------------------------
def configspace(space: SearchSpace | str, seed: int | None = None):
    """The space as a ConfigSpace ``ConfigurationSpace`` (the ``search`` extra): ordinal hyperparameters for the
    sizes, a categorical one for ``bias``, and an ``InCondition`` on ``n_layer`` for every per-layer key that is not
    always active. ``from_config(dict(configuration), space)`` gives the architecture."""
    try:
        from ConfigSpace import (
            CategoricalHyperparameter,
            ConfigurationSpace,
            InCondition,
            OrdinalHyperparameter,
        )
    except ImportError as err:
        raise ImportError("config_space needs ConfigSpace: pip install 'hw-gpt-bench[search]'") from err
    sp = _space(space)
    cs = ConfigurationSpace(name=sp.name, seed=seed)
    params = {key: (CategoricalHyperparameter(key, list(choices)) if key == "bias"
                    else OrdinalHyperparameter(key, list(choices)))
              for key, choices in domains(sp).items()}
    cs.add(list(params.values()))
    conditions = [InCondition(params[key], params["n_layer"], [n for n in sp.n_layers if n > layer_of(key)])
                  for key in params if layer_of(key) is not None and layer_of(key) >= min(sp.n_layers)]
    cs.add(conditions)
    return cs
