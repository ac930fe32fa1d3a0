"""Configurations <-> ArchConfig: exact round trips for every space, strict errors, ConfigSpace with conditions."""

from __future__ import annotations

import numpy as np
import pytest

from hwgpt_bench.benchmark import space as cs_space
from hwgpt_bench.search_spaces import SPACES, ArchConfig, sample_archs


@pytest.mark.parametrize("name", sorted(SPACES))
def test_config_and_vector_round_trips_are_exact(name):
    archs = sample_archs(name, 200, seed=3)
    for arch in archs:
        config = cs_space.to_config(arch)
        assert cs_space.from_config(config, name) == arch
        assert set(config) == {k for k in cs_space.config_keys(name) if cs_space.is_active(k, arch.n_layer)}
    vectors = np.stack([cs_space.to_vector(a) for a in archs])
    assert cs_space.from_vectors(vectors, name) == archs
    lower, upper = cs_space.vector_bounds(name)
    assert np.all(vectors >= lower) and np.all(vectors <= upper)


def test_inactive_keys_are_ignored_but_still_checked():
    sp = SPACES["gpt-s"]
    arch = sample_archs("gpt-s", 50, seed=1)
    short = next(a for a in arch if a.n_layer < sp.max_layers)
    config = cs_space.to_config(short)
    full = {**config, **{f"n_head_{i}": sp.n_heads[0] for i in range(short.n_layer, sp.max_layers)},
            **{f"mlp_ratio_{i}": sp.mlp_ratios[-1] for i in range(short.n_layer, sp.max_layers)}}
    assert cs_space.from_config(full, "gpt-s") == short  # syne-tune / pymoo style: every key present
    bad = {**full, f"n_head_{sp.max_layers - 1}": 5}
    with pytest.raises(ValueError, match=rf"n_head_{sp.max_layers - 1}: allowed values \[4, 8, 12\], got 5"):
        cs_space.from_config(bad, "gpt-s")


@pytest.mark.parametrize(("change", "message"), [
    ({"embed_dim": 100}, r"embed_dim: allowed values \[192, 384, 768\], got 100"),
    ({"bias": 1}, r"bias: allowed values \[False, True\], got 1"),
    ({"n_layer": True}, r"n_layer: allowed values \[10, 11, 12\], got True"),
    ({"n_head_0": 8.0}, r"n_head_0: allowed values \[4, 8, 12\], got 8.0"),
    ({"heads": 4}, r"unknown key\(s\) \['heads'\]"),
])
def test_bad_configurations_name_the_key_and_allowed_values(change, message):
    config = {**cs_space.to_config(SPACES["gpt-s"].smallest()), **change}
    with pytest.raises(ValueError, match=message):
        cs_space.from_config(config, "gpt-s")


def test_missing_active_key_is_an_error_and_numpy_ints_are_ints():
    arch = SPACES["gpt-s"].largest()
    config = cs_space.to_config(arch)
    del config["mlp_ratio_11"]
    with pytest.raises(ValueError, match=r"missing key 'mlp_ratio_11', active with n_layer=12"):
        cs_space.from_config(config, "gpt-s")
    numpy_config = {k: (np.int64(v) if isinstance(v, int) and not isinstance(v, bool) else v)
                    for k, v in cs_space.to_config(arch).items()}
    assert cs_space.from_config(numpy_config, "gpt-s") == arch
    with pytest.raises(ValueError, match="expected a mapping"):
        cs_space.from_config([1, 2], "gpt-s")


def test_vectors_out_of_range_or_fractional_are_errors():
    lower, upper = cs_space.vector_bounds("gpt-nano")
    x = upper[None, :].copy()
    assert cs_space.from_vectors(x, "gpt-nano")[0] == SPACES["gpt-nano"].largest()
    x[0, 0] = 3
    with pytest.raises(ValueError, match=r"embed_dim index must be in \[0, 2\]"):
        cs_space.from_vectors(x, "gpt-nano")
    with pytest.raises(ValueError, match="integral"):
        cs_space.from_vectors(upper[None, :] - 0.5, "gpt-nano")
    with pytest.raises(ValueError, match="expected shape"):
        cs_space.from_vectors(upper[None, :-1], "gpt-nano")


def test_configspace_has_conditions_and_round_trips():
    pytest.importorskip("ConfigSpace")
    from ConfigSpace import Configuration

    cs = cs_space.configspace("gpt-s", seed=0)
    assert set(cs.keys()) == set(cs_space.config_keys("gpt-s"))
    # layers 0-9 always exist in gpt-s (10-12 layers); layers 10 and 11 are conditional on n_layer
    assert {c.child.name for c in cs.conditions} == {"n_head_10", "n_head_11", "mlp_ratio_10", "mlp_ratio_11"}
    seen_layers = set()
    for config in cs.sample_configuration(200):
        arch = cs_space.from_config(dict(config), "gpt-s")
        seen_layers.add(arch.n_layer)
        assert set(dict(config)) == set(cs_space.to_config(arch))
    assert seen_layers == {10, 11, 12}
    for arch in sample_archs("gpt-s", 20, seed=0):
        config = Configuration(cs, values=cs_space.to_config(arch))  # validated by ConfigSpace
        assert cs_space.from_config(dict(config), "gpt-s") == arch


def test_arch_config_stays_strict_underneath():
    with pytest.raises(ValueError):
        ArchConfig("gpt-s", 192, 10, (4,) * 9, (2,) * 10, False)
