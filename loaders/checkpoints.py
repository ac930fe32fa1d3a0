"""Which weights a perplexity row comes from, and which perplexities the benchmark uses by default.

The ``checkpoints`` table describes every weights file a ``perplexity`` row was evaluated with (joined on
``checkpoint_sha256``): sandwich-rule supernets and architectures trained alone (``weights = "standalone"``). A
release keeps the rows of every checkpoint; the **default** one per space, the supernet checkpoint trained on the most
tokens, is what the demo, the card, the surrogates and the analysis helpers read (``default_perplexity``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl
import pyarrow as pa

from hwgpt_bench.loaders.io import data_files, load_table

log = logging.getLogger(__name__)

WEIGHTS = ("supernet", "standalone")  # the values of ``checkpoints.weights``


def default_shas(checkpoints: pl.DataFrame) -> dict[str, str]:
    """``{space: checkpoint_sha256}``: per space, the supernet checkpoint with the most ``tokens_seen`` (then the
    most ``train_steps``; a remaining tie is a ``ValueError`` naming both)."""
    supernets = checkpoints.filter(pl.col("weights") == "supernet")
    chosen = {}
    for (space,), group in supernets.group_by("space"):
        ranked = group.sort(["tokens_seen", "train_steps", "checkpoint_sha256"], descending=True)
        best = ranked.row(0, named=True)
        if ranked.height > 1 and ranked.row(1, named=True)["tokens_seen"] == best["tokens_seen"] \
                and ranked.row(1, named=True)["train_steps"] == best["train_steps"]:
            raise ValueError(f"checkpoints: space {space!r} has two supernet checkpoints trained equally long "
                             f"({best['checkpoint_sha256']}, {ranked.row(1, named=True)['checkpoint_sha256']}); "
                             "the default would be arbitrary")
        chosen[space] = best["checkpoint_sha256"]
    return chosen


def mark_defaults(checkpoints: pa.Table) -> pa.Table:
    """``checkpoints`` with its ``default`` column set by ``default_shas`` (true for one supernet per space)."""
    frame = pl.from_arrow(checkpoints)
    chosen = set(default_shas(frame).values())
    marked = frame.with_columns(pl.col("checkpoint_sha256").is_in(sorted(chosen)).alias("default"))
    return marked.to_arrow().cast(checkpoints.schema)


def default_problems(checkpoints: pa.Table, perplexity: pa.Table | None = None) -> list[str]:
    """Where ``default`` breaks the rule: not exactly ``default_shas``, or a space of ``perplexity`` without one."""
    frame = pl.from_arrow(checkpoints)
    try:
        expected = set(default_shas(frame).values())
    except ValueError as err:
        return [f"data/checkpoints: {err}"]
    marked = set(frame.filter(pl.col("default"))["checkpoint_sha256"].to_list())
    problems = []
    if marked != expected:
        problems.append(f"data/checkpoints: column default: true for {sorted(marked)}, the rule (per space the "
                        f"supernet trained on the most tokens) gives {sorted(expected)}")
    if perplexity is not None:
        spaces = set(pl.from_arrow(perplexity.select(["space"]))["space"].to_list())
        defaulted = set(frame.filter(pl.col("default"))["space"].to_list())
        problems += [f"data/checkpoints: space {s!r} has perplexity rows but no default supernet checkpoint"
                     for s in sorted(spaces - defaulted)]
    return problems


def select_default(perplexity: pl.DataFrame, checkpoints: pl.DataFrame | None) -> pl.DataFrame:
    """The rows of ``perplexity`` evaluated with a default checkpoint. Without ``checkpoints`` (a schema 2.0.0
    release: one checkpoint per space) every row; several checkpoints of one space there is a ``ValueError``."""
    if checkpoints is None:
        many = perplexity.group_by("space").agg(pl.col("checkpoint_sha256").n_unique().alias("n")).filter(
            pl.col("n") > 1)
        if many.height:
            raise ValueError(f"perplexity: spaces {sorted(many['space'].to_list())} have several checkpoints and "
                             "there is no checkpoints table to say which is the default")
        return perplexity
    defaults = checkpoints.filter(pl.col("default")).select("checkpoint_sha256")
    return perplexity.join(defaults, on="checkpoint_sha256", how="semi")


def default_perplexity(root: str | Path = "dataset") -> pl.DataFrame:
    """The ``perplexity`` rows of each space's default checkpoint (all columns; ``select_default``); empty when the
    release has no perplexity."""
    if not data_files("perplexity", root):
        return pl.DataFrame()
    checkpoints = load_table("checkpoints", root) if data_files("checkpoints", root) else None
    return select_default(load_table("perplexity", root), checkpoints)


def last_fifth(curves: pl.DataFrame, checkpoints: pl.DataFrame) -> pl.DataFrame:
    """Per checkpoint: the held-out loss of its largest subnet (a standalone checkpoint: its architecture) at the last
    evaluation at or before 80% of its steps and at its last evaluation, and the relative improvement between them
    (``(early - last) / early``; issue 17's convergence test: below 1% over the last fifth of training).

    Columns: ``checkpoint_sha256``, ``space``, ``weights``, ``train_steps``, ``step_early``, ``loss_early``,
    ``step_last``, ``loss_last``, ``improvement`` (fraction). Checkpoints without two such evaluations are left out.
    """
    held = curves.filter((pl.col("split") == "heldout") & pl.col("subnet").is_in(["largest", "standalone"]))
    joined = held.join(checkpoints.select("checkpoint_sha256", "weights", "train_steps"), on="checkpoint_sha256")
    rows = []
    for (sha,), group in joined.group_by("checkpoint_sha256"):
        steps = group["train_steps"][0]
        early = group.filter(pl.col("step") <= 0.8 * steps).sort("step").tail(1)
        last = group.filter(pl.col("step") <= steps).sort("step").tail(1)
        if early.is_empty() or last.is_empty() or early["step"][0] == last["step"][0]:
            continue
        loss_early, loss_last = early["loss"][0], last["loss"][0]
        rows.append({"checkpoint_sha256": sha, "space": group["space"][0], "weights": group["weights"][0],
                     "train_steps": steps, "step_early": early["step"][0], "loss_early": loss_early,
                     "step_last": last["step"][0], "loss_last": loss_last,
                     "improvement": (loss_early - loss_last) / loss_early})
    schema = {"checkpoint_sha256": pl.String, "space": pl.String, "weights": pl.String, "train_steps": pl.Int64,
              "step_early": pl.Int64, "loss_early": pl.Float64, "step_last": pl.Int64, "loss_last": pl.Float64,
              "improvement": pl.Float64}
    return pl.DataFrame(rows, schema=schema).sort("space", "train_steps", "checkpoint_sha256")
