"""Coverage of a latency surrogate on the calibration panels of its training session and of other sessions."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

pytest.importorskip("mapie")

from hwgpt_bench.search_spaces import sample_archs  # noqa: E402
from hwgpt_bench.surrogates_onnx.runtime import Surrogate  # noqa: E402
from hwgpt_bench.surrogates_onnx.sessions import session_coverage  # noqa: E402

WORKLOAD = {"phase": "forward", "batch_size": 1, "seq_len": 256, "dtype": "float32"}


def _entry(trained) -> dict:
    manifest = json.loads((trained / "manifest.json").read_text())
    return next(m for m in manifest["models"] if m["metric"] == "latency_ms" and m["device"] is not None
                and m["workload"] == WORKLOAD)


def test_trained_manifest_says_why_there_is_no_session_coverage(trained):
    manifest = json.loads((trained / "manifest.json").read_text())
    for entry in manifest["models"]:
        sessions = entry["sessions"]
        assert sessions["training_sessions"] is None and sessions["other_sessions"] is None
        assert sessions["reason"] in ("the panel measures latency only",
                                      "the training rows have no session_id (a host that was not fingerprinted)")
    assert "another session" in manifest["interval_covers"]


def test_panel_coverage_inside_and_outside_the_training_session(trained):
    entry = _entry(trained)
    model = Surrogate.load(entry["space"], entry["device"], "latency_ms", workload=WORKLOAD, root=trained)
    archs = sample_archs(entry["space"], 8, seed=77)
    point = model.predict(archs).point
    base = {"space": entry["space"], "device_id": entry["device"], **WORKLOAD}
    measurements = pl.DataFrame([{**base, "arch_id": archs[0].arch_id, "session_id": "S-train"}])
    panel = pl.DataFrame(
        [{**base, "session_id": "S-train", "panel_position": pos, "arch_id": a.arch_id, "latency_ms": [p, p, p]}
         for pos in ("start", "end") for a, p in zip(archs, point, strict=True)]
        + [{**base, "session_id": "S-other", "panel_position": "start", "arch_id": a.arch_id,
            "latency_ms": [10 * p, 10 * p]} for a, p in zip(archs, point, strict=True)])
    frames = {"measurements": measurements, "panel": panel, "archs": {a.arch_id: a for a in archs}}
    result = session_coverage(entry, model, frames)
    same, other = result["training_sessions"], result["other_sessions"]
    assert result["reason"] is None
    assert same["sessions"] == 1 and same["archs"] == 8 and same["repeats"] == 48
    assert all(v == 1.0 for v in same["coverage"].values())  # the point lies inside every interval
    assert same["median_measured_over_predicted"] == pytest.approx(1.0)
    assert same["kendall_tau"] == pytest.approx(1.0)
    assert other["sessions"] == 1 and other["repeats"] == 16
    assert all(v == 0.0 for v in other["coverage"].values())  # ten times slower: outside every interval
    assert other["median_measured_over_predicted"] == pytest.approx(10.0)
    assert np.isclose(other["kendall_tau"], 1.0)  # the ranking holds even though the level does not
    alone = session_coverage(entry, model, {**frames, "panel": panel.filter(pl.col("session_id") == "S-train")})
    assert alone["other_sessions"] is None and "no panel rows of another session" in alone["reason"]


def test_a_paired_model_is_judged_on_the_panels_paired_values(trained):
    """Another session whose host ran 10x slower, its reference too: the paired values are the model's, so they
    lie inside every interval; the sessions the entry names as its training sessions decide which group is which."""
    entry = {**_entry(trained), "paired_reference_ms": 20.0, "training_session_ids": ["S-train"]}
    model = Surrogate(entry, Surrogate.load(entry["space"], entry["device"], "latency_ms", workload=WORKLOAD,
                                            root=trained).session)
    archs = sample_archs(entry["space"], 8, seed=77)
    point = model.predict(archs).point
    base = {"space": entry["space"], "device_id": entry["device"], **WORKLOAD}
    measurements = pl.DataFrame([{**base, "arch_id": archs[0].arch_id, "session_id": "S-later"}])
    panel = pl.DataFrame(
        [{**base, "session_id": "S-other", "panel_position": "start", "arch_id": a.arch_id,
          "latency_ms": [10 * p, 10 * p], "reference_ms": [200.0, 200.0]} for a, p in zip(archs, point, strict=True)]
        + [{**base, "session_id": "S-other", "panel_position": "end", "arch_id": archs[0].arch_id,
            "latency_ms": [1.0], "reference_ms": None}])  # a row without its reference cannot be paired: left out
    result = session_coverage(entry, model, {"measurements": measurements, "panel": panel,
                                             "archs": {a.arch_id: a for a in archs}})
    assert result["training_sessions"] is None  # S-train, from the entry, has no panel rows here
    other = result["other_sessions"]
    assert other["repeats"] == 16 and all(v == 1.0 for v in other["coverage"].values())
    assert other["median_measured_over_predicted"] == pytest.approx(1.0)
