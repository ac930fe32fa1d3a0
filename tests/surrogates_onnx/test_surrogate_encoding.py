"""The vectorised encoding (``encoding.encode_columns``) is ``search_spaces.encode`` bit for bit, and as strict."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from hwgpt_bench.search_spaces import SPACES, encode, feature_names, sample_archs
from hwgpt_bench.surrogates_onnx.encoding import encode_columns


def _padded(archs, name: str, max_layers: int) -> np.ndarray:
    out = np.zeros((len(archs), max_layers), dtype=np.int64)
    for i, a in enumerate(archs):
        out[i, :a.n_layer] = getattr(a, name)
    return out


def _columns(archs, space: str) -> dict:
    sp = SPACES[space]
    return {"embed_dim": np.array([a.embed_dim for a in archs]), "n_layer": np.array([a.n_layer for a in archs]),
            "bias": np.array([a.bias for a in archs]), "n_head": _padded(archs, "n_head", sp.max_layers),
            "mlp_ratio": _padded(archs, "mlp_ratio", sp.max_layers)}


@pytest.mark.parametrize("space", sorted(SPACES))
def test_columns_encode_exactly_as_one_architecture_at_a_time(space):
    archs = sample_archs(space, 300, seed=4)
    expected = np.asarray([encode(a) for a in archs], dtype=np.float32)
    got = encode_columns(space, _columns(archs, space))
    assert got.dtype == np.float32 and got.shape == (300, len(feature_names(space)))
    np.testing.assert_array_equal(got, expected)


def test_dataframes_and_ragged_sequences_give_the_same_matrix():
    archs = sample_archs("gpt-s", 50, seed=2)
    expected = np.asarray([encode(a) for a in archs], dtype=np.float32)
    frame = pl.DataFrame([a.to_dict() for a in archs])  # list columns, plus arch_id and space
    np.testing.assert_array_equal(encode_columns("gpt-s", frame), expected)
    ragged = {**_columns(archs, "gpt-s"), "n_head": [list(a.n_head) for a in archs],
              "mlp_ratio": [tuple(a.mlp_ratio) for a in archs]}
    np.testing.assert_array_equal(encode_columns("gpt-s", ragged), expected)
    pandas = pytest.importorskip("pandas")
    np.testing.assert_array_equal(encode_columns("gpt-s", pandas.DataFrame([a.to_dict() for a in archs])), expected)


def _bad(space="gpt-nano", **changes):
    archs = sample_archs(space, 6, seed=1)
    cols = _columns(archs, space)
    for key, fn in changes.items():
        cols[key] = fn(cols[key].copy())
    return cols


def _set(index, value):
    def change(arr):
        arr[index] = value
        return arr
    return change


@pytest.mark.parametrize(("cols", "message"), [
    (_bad(embed_dim=_set(2, 100)), r"embed_dim\[2\]: 100 is not allowed; allowed values: \[128, 192, 256\]"),
    (_bad(embed_dim=lambda a: a.astype(float)), r"embed_dim: expected a 1-d integer column, got dtype float64"),
    (_bad(n_layer=_set(0, 9)), r"n_layer\[0\]: 9 is not allowed; allowed values"),
    (_bad(bias=lambda a: a.astype(int)), r"bias: expected a 1-d boolean column"),
    (_bad(n_head=_set((1, 0), 3)), r"n_head\[1, 0\]: 3 is not allowed; allowed values"),
    (_bad(mlp_ratio=lambda a: np.pad(a[:, :-1], ((0, 0), (0, 0)))), r"mlp_ratio: expected an integer array of shape"),
    (_bad(mlp_ratio=_set((0, -1), 2)), r"mlp_ratio\[0\]: values beyond n_layer = \d must be 0"),
    ({"embed_dim": np.array([128])}, r"n_layer: column missing; the architecture columns are"),
])
def test_bad_columns_name_the_column_row_and_allowed_values(cols, message):
    with pytest.raises(ValueError, match=message):
        encode_columns("gpt-nano", cols)


def test_another_space_in_the_space_column_is_an_error():
    archs = sample_archs("gpt-nano", 3, seed=0)
    frame = pl.DataFrame([a.to_dict() for a in archs]).with_columns(pl.Series("space", ["gpt-nano", "gpt-s",
                                                                                        "gpt-nano"]))
    with pytest.raises(ValueError, match=r"space\[1\]: architecture says 'gpt-s' but the model is for 'gpt-nano'"):
        encode_columns("gpt-nano", frame)


def test_the_batch_api_predicts_as_the_per_architecture_api(trained):
    from hwgpt_bench.surrogates_onnx.runtime import Surrogate

    model = Surrogate.load("gpt-nano", "cpu-syn-2t", "latency_ms", root=trained)  # conftest's synthetic release
    archs = sample_archs("gpt-nano", 200, seed=9)
    one, batch = model.predict(archs), model.predict_columns(pl.DataFrame([a.to_dict() for a in archs]))
    np.testing.assert_array_equal(batch.point, one.point)
    np.testing.assert_array_equal(batch.upper, one.upper)
