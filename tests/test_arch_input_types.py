"""Architectures read back from tables and arrays: parquet rows (polars, pyarrow) and numpy values still validate,
but only real integers and booleans: a float or bool array is refused, as in JSON."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hwgpt_bench.generation.architectures import architecture_row
from hwgpt_bench.loaders.schema import SCHEMAS
from hwgpt_bench.search_spaces import ArchConfig, archs_from_dicts, sample_archs


@pytest.fixture(scope="module")
def parquet_rows(tmp_path_factory):
    archs = sample_archs("gpt-s-wide", 12, seed=4)
    table = pa.Table.from_pylist([architecture_row(a, 4, i) for i, a in enumerate(archs)],
                                 schema=SCHEMAS["architectures"])
    path = tmp_path_factory.mktemp("archs") / "architectures.parquet"
    pq.write_table(table, path)
    return archs, path


def test_parquet_rows_read_back_through_polars_and_pyarrow(parquet_rows):
    import polars as pl

    archs, path = parquet_rows
    assert archs_from_dicts(pl.read_parquet(path).to_dicts()) == archs
    assert archs_from_dicts(pq.read_table(path).to_pylist()) == archs
    assert archs_from_dicts(pl.read_parquet(path).iter_rows(named=True)) == archs


def test_numpy_integers_and_bools_are_accepted_and_stored_as_python_values(parquet_rows):
    arch = parquet_rows[0][1]
    d = {"space": arch.space, "embed_dim": np.int32(arch.embed_dim), "n_layer": np.int64(arch.n_layer),
         "n_head": np.asarray(arch.n_head, dtype=np.int32), "mlp_ratio": [np.uint8(r) for r in arch.mlp_ratio],
         "bias": np.bool_(arch.bias)}
    got = ArchConfig.from_dict(d)
    assert got == arch and hash(got) == hash(arch) and got.arch_id == arch.arch_id
    assert type(got.embed_dim) is int and type(got.bias) is bool and {type(v) for v in got.n_head} == {int}
    assert got.to_json() == arch.to_json()


@pytest.mark.parametrize(("change", "message"), [
    ({"embed_dim": np.float64(192.0)}, r"embed_dim: .* is not allowed: expected a JSON integer"),
    ({"n_layer": np.bool_(True)}, r"n_layer: .* is not allowed: expected a JSON integer"),
    ({"n_head": np.array([4.0, 4.0, 4.0])}, r"n_head\[0\]: .* is not allowed: expected a JSON integer"),
    ({"mlp_ratio": np.array([True, True, True])}, r"mlp_ratio\[0\]: .* is not allowed: expected a JSON integer"),
    ({"n_head": np.array([[4, 4, 4]])}, r"n_head: .* is not allowed: expected a JSON array of integers"),
    ({"bias": np.int64(1)}, r"bias: .* is not allowed: expected a JSON boolean true/false"),
    ({"bias": np.float64(0.0)}, r"bias: .* is not allowed: expected a JSON boolean true/false"),
])
def test_numpy_floats_and_bools_are_not_sizes(change, message):
    base = {"space": "gpt-s-wide", "embed_dim": 192, "n_layer": 3, "n_head": [4, 4, 4], "mlp_ratio": [1, 1, 1],
            "bias": False}
    assert ArchConfig.from_dict(base).mlp_ratio == (1, 1, 1)
    with pytest.raises(ValueError, match=message):
        ArchConfig.from_dict({**base, **change})
