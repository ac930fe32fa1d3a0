"""What a latency surrogate's intervals cover outside the session it was trained on, from the calibration panels.

Every profiling session measures the same calibration panel at its start and end (the release's ``panel`` config).
For one model of (space, device, workload), the panel rows of that device and workload split into:

- **training sessions**: the sessions whose ``measurements`` rows the model was trained on;
- **other sessions**: every other session of the same device (another day, another process; the same hardware
  fingerprint).

Per group: the share of single panel repeats inside each level's interval (what the intervals promise: a single new
measurement), the median of measured / predicted point (how fast that session ran relative to the model) and Kendall's
tau between the predicted points and the measured medians of the panel architectures. A paired device's model is
judged on the panel's paired values (``Surrogate.paired_values``: each step over the reference step beside it, times
the model's ``paired_reference_ms``), what it predicts. Devices without session ids
(release 0.1.0's unfingerprinted host) and models without panel rows get ``None`` with the reason.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl

from hwgpt_bench.loaders.io import data_files, load_table
from hwgpt_bench.loaders.reproducibility import kendall_tau
from hwgpt_bench.metrics import WORKLOAD_KEYS
from hwgpt_bench.search_spaces import ArchConfig
from hwgpt_bench.surrogates_onnx.runtime import Surrogate, open_session

log = logging.getLogger(__name__)

METRIC = "latency_ms"  # the panel measures latency only


def panel_stats(rows: pl.DataFrame, model: Surrogate, archs: dict[str, ArchConfig]) -> dict:
    """Of panel ``rows`` (one model's space and workload): sessions, architectures and repeats, the share of single
    repeats inside each level's interval, the median of measured median / predicted point and Kendall's tau between
    the points and the architectures' measured medians."""
    pred = model.predict([archs[a] for a in rows["arch_id"]])
    repeats = panel_repeats(rows, model)
    coverage = {}
    for j, level in enumerate(pred.levels):
        inside = [np.mean((r >= pred.lower[i, j]) & (r <= pred.upper[i, j])) * r.size for i, r in enumerate(repeats)]
        coverage[f"{level:g}"] = float(sum(inside) / sum(r.size for r in repeats))
    medians = np.array([np.median(r) for r in repeats])
    per_arch = pl.DataFrame({"arch_id": rows["arch_id"], "median": medians, "point": pred.point}).group_by(
        "arch_id").agg(pl.col("median").median(), pl.col("point").first())
    return {"sessions": rows["session_id"].n_unique(), "archs": rows["arch_id"].n_unique(),
            "repeats": int(sum(r.size for r in repeats)), "coverage": coverage,
            "median_measured_over_predicted": float(np.median(medians / pred.point)),
            "kendall_tau": kendall_tau(per_arch["point"].to_numpy(), per_arch["median"].to_numpy())}


def panel_repeats(rows: pl.DataFrame, model: Surrogate) -> list[np.ndarray]:
    """Per row of ``rows`` (``panel`` or ``measurements`` of the model's device), its repeats in what ``model``
    predicts: bare ``latency_ms``, or for a paired model the paired values (rows need ``reference_ms``)."""
    if model.paired_reference_ms is None:
        return [np.asarray(v, dtype=float) for v in rows["latency_ms"]]
    return [model.paired_values(v, r) for v, r in zip(rows["latency_ms"], rows["reference_ms"], strict=True)]


def training_sessions(measurements: pl.DataFrame, entry: dict) -> set[str]:
    """The sessions ``entry``'s model was trained on: its ``training_session_ids`` where the manifest records them
    (models trained since it was added), else every session of its space, device and workload in ``measurements``."""
    if entry.get("training_session_ids"):
        return set(entry["training_session_ids"])
    rows = measurements.filter(pl.col("space") == entry["space"], pl.col("device_id") == entry["device"],
                               *[pl.col(k) == entry["workload"][k] for k in WORKLOAD_KEYS])
    return set(rows["session_id"].drop_nulls().to_list())


def session_coverage(entry: dict, model: Surrogate, tables: dict) -> dict:
    """``{"training_sessions": stats | None, "other_sessions": stats | None, "reason": ...}`` for one manifest
    entry (see the module docstring); ``tables`` holds the release's ``measurements``, ``panel`` and
    ``architectures`` as polars frames (``panel`` may be missing)."""
    if entry["metric"] != METRIC or entry["device"] is None:
        return {"training_sessions": None, "other_sessions": None, "reason": "the panel measures latency only"}
    trained_on = training_sessions(tables["measurements"], entry)
    if not trained_on:
        return {"training_sessions": None, "other_sessions": None,
                "reason": "the training rows have no session_id (a host that was not fingerprinted)"}
    panel = tables.get("panel")
    rows = pl.DataFrame() if panel is None else panel.filter(
        pl.col("space") == entry["space"], pl.col("device_id") == entry["device"],
        *[pl.col(k) == entry["workload"][k] for k in WORKLOAD_KEYS])
    if rows.height and model.paired_reference_ms is not None:
        rows = rows.filter(pl.col("reference_ms").is_not_null())
    out = {"reason": None}
    for name, mask in (("training_sessions", True), ("other_sessions", False)):
        group = rows.filter(pl.col("session_id").is_in(sorted(trained_on)) == mask) if rows.height else rows
        out[name] = panel_stats(group, model, tables["archs"]) if group.height else None
    if out["other_sessions"] is None:
        out["reason"] = "no panel rows of another session of this device and workload"
    return out


def release_frames(root: str | Path) -> dict:
    """The release tables ``session_coverage`` reads: measurements, panel (if any) and the architectures by id."""
    archs = load_table("architectures", root)
    frames = {"measurements": load_table("measurements", root),
              "archs": {r["arch_id"]: ArchConfig.from_canonical(r["canonical"]) for r in archs.iter_rows(named=True)}}
    if data_files("panel", root):
        frames["panel"] = load_table("panel", root)
    return frames


def add_session_coverage(entries: list[dict], dataset: str | Path, models: str | Path) -> None:
    """Set ``entry["sessions"]`` (``session_coverage``) on every entry, in place, loading each model from ``models``."""
    frames = release_frames(dataset)
    for entry in entries:
        model = Surrogate(entry, open_session(Path(models) / entry["file"]))
        entry["sessions"] = session_coverage(entry, model, frames)
        log.debug("%s: sessions %s", entry["file"], entry["sessions"])
