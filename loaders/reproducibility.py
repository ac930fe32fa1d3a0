"""How far a latency can be trusted: drift within a session, differences between sessions and between hosts.

Every profiling session measures the same calibration panel (``hwgpt_bench.panel``) at its start and at its end
(the ``panel`` table). From those repeats:

- ``session_drift``: per session and space, end vs start: median over the panel of the ratio of the two medians, and
  Kendall's tau between the two rankings (1 = the panel kept its order);
- ``session_pairs``: per pair of sessions that measured the same space and workload: the median ratio of the later
  session's panel medians to the earlier one's, and tau; ``same_device`` says whether both ran on one device id;
- ``within_session_spread``: per device and space, the median relative IQR of the main workload's repeats;
- ``process_spread``: per device, space and workload, how far one architecture's median moves from one profiling
  process to the next once each process's level over the panel is removed (what the repeats of one process cannot
  show), next to the spread that the repeats of one median alone would give.

Light: numpy and polars only.
"""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl

PANEL_WORKLOAD = ("phase", "batch_size", "seq_len", "dtype")


def kendall_tau(x: np.ndarray, y: np.ndarray) -> float | None:
    """Kendall's tau-b of two equally long 1-D arrays (None for fewer than 3 pairs or a constant array)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3:
        return None
    i, j = np.triu_indices(len(x), k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    ties_x, ties_y = np.sum(dx == 0), np.sum(dy == 0)
    n_pairs = len(i)
    denominator = np.sqrt((n_pairs - ties_x) * (n_pairs - ties_y))
    return None if denominator == 0 else float(np.sum(dx * dy) / denominator)


def panel_medians(panel: pl.DataFrame) -> pl.DataFrame:
    """One row per (session, position, space, workload, arch): ``median_ms`` of the panel repeats (milliseconds) and
    ``median_ratio`` of their ratios to the paired reference's steps (unitless; null where not paired)."""
    ratio = ((pl.col("latency_ms") / pl.col("reference_ms")).list.median() if "reference_ms" in panel.columns
             else pl.lit(None, dtype=pl.Float64))
    return panel.select("session_id", "device_id", "panel_position", "space", *PANEL_WORKLOAD, "arch_id",
                        pl.col("latency_ms").list.median().alias("median_ms"), ratio.alias("median_ratio"))


def _compare(a: pl.DataFrame, b: pl.DataFrame) -> dict:
    joined = a.join(b, on="arch_id", suffix="_b")
    if joined.is_empty():
        return {"archs": 0, "median_ratio": None, "tau": None}
    ratio = (joined["median_ms_b"] / joined["median_ms"]).median()
    return {"archs": joined.height, "median_ratio": ratio,
            "tau": kendall_tau(joined["median_ms"].to_numpy(), joined["median_ms_b"].to_numpy())}


def session_drift(panel: pl.DataFrame) -> pl.DataFrame:
    """Per session, space and workload: ``archs``, ``median_ratio`` (end / start, unitless) and ``tau``; for a paired
    session also ``paired_ratio`` and ``paired_tau``, the same of the medians of the steps' ratios to the paired
    reference (null where not paired)."""
    medians = panel_medians(panel)
    rows = []
    for key, group in medians.group_by("session_id", "device_id", "space", *PANEL_WORKLOAD, maintain_order=True):
        start, end = (group.filter(pl.col("panel_position") == p) for p in ("start", "end"))
        paired = _compare(*(g.select("arch_id", pl.col("median_ratio").alias("median_ms")).drop_nulls()
                            for g in (start, end)))
        rows.append(dict(zip(("session_id", "device_id", "space", *PANEL_WORKLOAD), key, strict=True))
                    | _compare(start.select("arch_id", "median_ms"), end.select("arch_id", "median_ms"))
                    | {"paired_ratio": paired["median_ratio"], "paired_tau": paired["tau"]})
    schema = _schema(("session_id", "device_id", "space")) | {"paired_ratio": pl.Float64, "paired_tau": pl.Float64}
    return pl.DataFrame(rows, schema=schema).sort("space", "session_id")


def session_pairs(panel: pl.DataFrame, sessions: pl.DataFrame) -> pl.DataFrame:
    """Per pair of sessions with the same space and workload (earlier first, by ``started_at``): both device ids,
    ``same_device``, ``archs``, ``median_ratio`` (later / earlier panel medians at the start) and ``tau``, and
    ``paired_ratio`` / ``paired_tau``, the same of the ratios to the paired reference where both are paired."""
    starts = panel_medians(panel.filter(pl.col("panel_position") == "start")).join(
        sessions.select("session_id", "started_at"), on="session_id", how="left")
    rows = []
    for key, group in starts.group_by("space", *PANEL_WORKLOAD, maintain_order=True):
        order = group.select("session_id", "device_id", "started_at").unique().sort("started_at", "session_id")
        for (sa, da, _), (sb, db, _) in itertools.combinations(order.iter_rows(), 2):
            a, b = (group.filter(pl.col("session_id") == s) for s in (sa, sb))
            paired = _compare(*(g.select("arch_id", pl.col("median_ratio").alias("median_ms")).drop_nulls()
                                for g in (a, b)))
            rows.append(dict(zip(("space", *PANEL_WORKLOAD), key, strict=True))
                        | {"session_a": sa, "device_a": da, "session_b": sb, "device_b": db, "same_device": da == db}
                        | _compare(a.select("arch_id", "median_ms"), b.select("arch_id", "median_ms"))
                        | {"paired_ratio": paired["median_ratio"], "paired_tau": paired["tau"]})
    cols = ("space", *PANEL_WORKLOAD, "session_a", "device_a", "session_b", "device_b")
    schema = {c: pl.Int32 if c in ("batch_size", "seq_len") else pl.String for c in cols} | {
        "same_device": pl.Boolean, "archs": pl.Int64, "median_ratio": pl.Float64, "tau": pl.Float64,
        "paired_ratio": pl.Float64, "paired_tau": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


def _schema(ids: tuple[str, ...]) -> dict:
    return ({c: pl.String for c in ids} | {"phase": pl.String, "batch_size": pl.Int32, "seq_len": pl.Int32,
                                          "dtype": pl.String, "archs": pl.Int64, "median_ratio": pl.Float64,
                                          "tau": pl.Float64})


def _between_processes(rows: pl.DataFrame, keys: list[str], value: str) -> pl.DataFrame:
    """Per ``keys``: the sd of ``value`` (a log) of one architecture between processes, each process's mean and each
    architecture's mean removed, degrees of freedom restored; ``sd`` null where ``value`` is."""
    rows = rows.filter(pl.col(value).is_not_null())
    rows = rows.with_columns((pl.col(value) - pl.col(value).mean().over([*keys, "process"])).alias("centred"))
    rows = rows.with_columns((pl.col("centred") - pl.col("centred").mean().over([*keys, "arch_id"])).alias("resid"))
    out = rows.group_by(keys).agg(pl.col("process").n_unique().alias("k"), pl.col("resid").std().alias("sd"))
    return out.with_columns(pl.when(pl.col("k") >= 2).then(pl.col("sd") * (pl.col("k") / (pl.col("k") - 1)).sqrt())
                            .alias(value + "_sd")).drop("k", "sd")


def process_spread(panel: pl.DataFrame) -> pl.DataFrame:
    """Per device, space and workload with at least two panel processes (session x position): ``processes``,
    ``archs``, ``process_sd``, ``paired_sd`` and ``repeat_sd`` (all in log units, ~ relative).

    ``process_sd``: the standard deviation of ``log(median)`` of one architecture between processes, after removing
    each process's mean over the panel (so a host running uniformly faster or slower, i.e. drift, does not count) and
    each architecture's mean, with the lost degrees of freedom restored (``sqrt(k / (k - 1))`` for ``k`` processes).
    ``repeat_sd``: the median over panel rows of the standard error of a median of that row's repeats
    (``1.2533 sd / mean / sqrt(n)``): what ``process_sd`` would be if repeats of one process told the whole story.
    ``paired_sd``: ``process_sd`` of the median of ``latency_ms[i] / reference_ms[i]`` where the panel was paired with
    a reference (``reference_ms``; null where no two processes were), the host's wander within a process divided out.
    """
    keys = ["device_id", "space", *PANEL_WORKLOAD]
    ratio = (pl.col("latency_ms") / pl.col("reference_ms") if "reference_ms" in panel.columns
             else pl.lit(None, dtype=pl.List(pl.Float64)))
    rows = panel.with_columns(
        pl.col("latency_ms").list.median().log().alias("log_median"),
        ratio.list.median().cast(pl.Float64).log().alias("log_ratio"),
        (1.2533 * pl.col("latency_ms").list.std() / pl.col("latency_ms").list.mean()
         / pl.col("latency_ms").list.len().sqrt()).alias("median_se"),
        pl.concat_str("session_id", "panel_position", separator="/").alias("process"))
    out = (rows.group_by(keys).agg(pl.col("process").n_unique().alias("processes"),
                                   pl.col("arch_id").n_unique().alias("archs"),
                                   pl.col("median_se").median().alias("repeat_sd"))
           .filter(pl.col("processes") >= 2)
           .join(_between_processes(rows, keys, "log_median"), on=keys, how="left", nulls_equal=True)
           .join(_between_processes(rows, keys, "log_ratio"), on=keys, how="left", nulls_equal=True)
           .rename({"log_median_sd": "process_sd", "log_ratio_sd": "paired_sd"}))
    return out.select(*keys, "processes", "archs", "process_sd", "paired_sd", "repeat_sd").sort("device_id", "space")
