"""The dataset card: its generated parts, rendered from the schema and from a release's tables.

The card source (``DATASET_CARD.md`` of the code repository) is prose with generated parts that the release build
fills in and that ``validate`` re-checks against the tables, so that no number in a card can go stale:

- the ``configs:`` and ``size_categories`` front matter;
- one column table per config between ``<!-- columns:<config>:start -->`` and ``<!-- columns:<config>:end -->``
  (from ``schema.COLUMN_DOCS``);
- data tables between ``<!-- table:<name>:start -->`` and ``<!-- table:<name>:end -->`` (``DATA_TABLES``);
- inline numbers ``<!-- fact:<name> -->3,205<!-- /fact -->`` (``card_facts`` lists the names).

Light: polars and pyarrow only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl
import pyarrow as pa

from hwgpt_bench.files import write_text_atomic
from hwgpt_bench.loaders.analysis import main_workload
from hwgpt_bench.loaders.checkpoints import select_default
from hwgpt_bench.loaders.io import DATA_DIR
from hwgpt_bench.loaders.schema import COLUMN_DOCS, PRIMARY_KEYS, SCHEMAS, schema_for
from hwgpt_bench.search_spaces import SPACES

log = logging.getLogger(__name__)

README = "README.md"
DEFAULT_CONFIG = "measurements"
FACT = re.compile(r"<!-- fact:([A-Za-z0-9_.:-]+) -->(.*?)<!-- /fact -->", re.DOTALL)
TABLE = re.compile(r"<!-- table:([a-z_]+):start -->\n(.*?)<!-- table:\1:end -->", re.DOTALL)


def _type_name(typ: pa.DataType) -> str:
    return f"list<{_type_name(typ.value_type)}>" if pa.types.is_list(typ) else str(typ)


def column_table(config: str) -> str:
    """The card's markdown table of ``config``: primary key line, then column, Arrow type, nullable, description."""
    keys = ", ".join(f"`{k}`" for k in PRIMARY_KEYS[config])
    rows = [f"| `{f.name}` | {_type_name(f.type)} | {'yes' if f.nullable else 'no'} | "
            f"{COLUMN_DOCS[config][f.name].replace('|', chr(92) + '|')} |" for f in schema_for(config)]
    return "\n".join([f"Primary key: {keys}.", "", "| column | type | nullable | description |",
                      "| --- | --- | --- | --- |", *rows])


def markers(config: str) -> tuple[str, str]:
    """The HTML comments that enclose ``config``'s generated column table in the card."""
    return f"<!-- columns:{config}:start -->", f"<!-- columns:{config}:end -->"


def default_config(configs: Sequence[str]) -> str:
    """The config ``load_dataset`` opens without a name: ``measurements`` when present, else the first one."""
    return DEFAULT_CONFIG if DEFAULT_CONFIG in configs else list(configs)[0]


def configs_yaml(configs: Sequence[str] = tuple(SCHEMAS)) -> list[str]:
    """Front-matter lines of ``configs:``: one entry per config, ``data/<config>/train-*``, the default first."""
    default = default_config(configs)
    lines = ["configs:"]
    for config in (default, *(c for c in configs if c != default)):
        lines += [f"- config_name: {config}", "  data_files:", "  - split: train",
                  f"    path: {DATA_DIR}/{config}/train-*"]
        lines += ["  default: true"] if config == default else []
    return lines


def size_category(n_rows: int) -> str:
    """The Hugging Face ``size_categories`` label of a dataset with ``n_rows`` rows."""
    for bound, label in ((1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (1e6, "100K<n<1M"),
                         (1e7, "1M<n<10M"), (1e8, "10M<n<100M")):
        if n_rows < bound:
            return label
    return "100M<n<1B"


def split_front_matter(text: str) -> tuple[list[str], str]:
    """(front-matter lines, rest of the card starting at the closing ``---``); ``ValueError`` if there is none."""
    end = text.find("\n---\n", 3)
    if not text.startswith("---\n") or end < 0:
        raise ValueError("no YAML front matter (the card must start with a '---' line and close it with another)")
    return text[4:end].split("\n"), text[end + 1:]


def _set_key(lines: list[str], key: str, block: list[str]) -> list[str]:
    """Replace top-level ``key`` and its indented or ``-`` lines with ``block`` (appended when absent)."""
    start = next((i for i, line in enumerate(lines) if line.startswith(f"{key}:")), None)
    if start is None:
        return [*lines, *block]
    stop = start + 1
    while stop < len(lines) and lines[stop].startswith((" ", "-")):
        stop += 1
    return [*lines[:start], *block, *lines[stop:]]


def _replace_table(body: str, config: str) -> str:
    start, end = markers(config)
    i, j = body.find(start), body.find(end)
    if i < 0 or j < i:
        raise ValueError(f"card: markers {start} ... {end} are missing or out of order")
    return f"{body[:i + len(start)]}\n{column_table(config)}\n{body[j:]}"


def render_card(text: str, tables: dict[str, pa.Table] | None = None, version: str | None = None) -> str:
    """``text`` with its generated parts regenerated: ``configs:`` front matter and column tables from the schema.

    With ``tables`` (the tables of a release) ``configs:`` lists only those configs, ``size_categories`` follows the
    largest, and every inline fact (``version`` too, when given) and data table is recomputed from them. Everything
    else is kept verbatim, so ``render_card(card, tables, version) == card`` exactly when the card is in sync.
    """
    lines, body = split_front_matter(text)
    lines = _set_key(lines, "configs", configs_yaml(list(tables) if tables else tuple(SCHEMAS)))
    if tables:
        biggest = max(t.num_rows for t in tables.values())
        lines = _set_key(lines, "size_categories", ["size_categories:", f"- {size_category(biggest)}"])
        body = fill_tables(fill_facts(body, card_facts(tables, version)), tables)
    for config in SCHEMAS:
        body = _replace_table(body, config)
    return "---\n" + "\n".join(lines) + "\n" + body


def card_problems(text: str, where: str = README) -> list[str]:
    """How the column tables of the card ``text`` depart from ``schema.COLUMN_DOCS`` (each names config and row)."""
    problems = []
    for config in SCHEMAS:
        start, end = markers(config)
        i, j = text.find(start), text.find(end)
        if i < 0 or j < i:
            problems.append(f"{where}: column table of {config}: markers {start} ... {end} missing or out of order")
            continue
        found, expected = text[i + len(start):j].strip().split("\n"), column_table(config).split("\n")
        stale = [line for line in found if line not in expected] + [line for line in expected if line not in found]
        if stale:
            problems.append(f"{where}: column table of {config} differs from the schema at {stale[0]!r} "
                            f"(regenerate with `hwgpt-bench build-release --sync-card` or render_card)")
    return problems


def sync_card(path: str | Path) -> bool:
    """Rewrite the card at ``path`` in place if its configs or column tables are stale; True if it changed."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    fresh = render_card(text)
    if fresh != text:
        write_text_atomic(fresh, path)
        log.info("rewrote the column tables and configs of %s", path)
    return fresh != text


# ---- numbers of a release (facts and data tables) ----------------------------------------------------------------
WORKLOAD = ("phase", "batch_size", "seq_len", "dtype")


def _count(n: int) -> str:
    return f"{n:,}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x: float | None, spec: str = ".1f") -> str:
    return "n/a" if x is None else format(x, spec)


def _frame(tables: dict[str, pa.Table], config: str) -> pl.DataFrame | None:
    return pl.from_arrow(tables[config]) if config in tables else None


def per_arch_noise(summary: pl.DataFrame) -> pl.DataFrame:
    """``summary`` with ``rel_iqr`` (IQR / median of an architecture's repeats, unitless) and ``main`` (bool).

    ``main`` marks the rows of each (device, space)'s main workload (``analysis.main_workload``: the ``forward``
    workload measured on the most architectures), the one the card's noise figures describe.
    """
    keys = ["device_id", "space", *WORKLOAD]
    main = main_workload(summary).select(keys).unique().with_columns(pl.lit(True).alias("main"))
    return (summary.with_columns((pl.col("latency_ms_iqr") / pl.col("latency_ms_median")).alias("rel_iqr"))
            .join(main, on=keys, how="left").with_columns(pl.col("main").fill_null(False)))


def _architecture_facts(archs: pl.DataFrame) -> dict[str, str]:
    facts = {"architectures": _count(archs.height), "spaces": _count(archs["space"].n_unique())}
    facts |= {f"archs.{s}": _count(n) for s, n in archs.group_by("space").len().iter_rows()}
    return facts


def _measurement_facts(m: pl.DataFrame, summary: pl.DataFrame) -> dict[str, str]:
    busy = m["other_cpu_cores"].drop_nulls()
    noise = per_arch_noise(summary).filter(pl.col("main"))
    facts = {"workloads": _count(m.select(WORKLOAD).unique().height),
             "other_cpu_cores.p99": _num(busy.quantile(0.99, "linear") if busy.len() else None, ".2f"),
             "rows.other_cpu_cores_above_0.2": _count(int((busy > 0.2).sum())),
             "rel_iqr.max": _pct(noise["rel_iqr"].max())}
    for space, group in noise.group_by("space"):
        facts[f"rel_iqr_p50.{space[0]}"] = _pct(group["rel_iqr"].median())
    return facts


def _perplexity_facts(ppl: pl.DataFrame, checkpoints: pl.DataFrame | None) -> dict[str, str]:
    """Architectures and range of the default checkpoints' perplexities; ``checkpoints`` counts every one."""
    default = select_default(ppl, checkpoints)
    return {"perplexity_archs": _count(default["arch_id"].n_unique()),
            "checkpoints": _count(ppl["checkpoint_sha256"].n_unique()),
            "perplexity.min": _num(default["perplexity"].min()), "perplexity.max": _num(default["perplexity"].max())}


def card_facts(tables: dict[str, pa.Table], version: str | None = None) -> dict[str, str]:
    """Every inline number a card may cite, as the text it must read, from the tables (and version) of a release.

    Names: ``version`` (when given), ``rows.<config>``, ``architectures``, ``spaces``, ``archs.<space>``, ``devices``,
    ``device_ids``; with measurements ``workloads``, ``other_cpu_cores.p99`` (cores),
    ``rows.other_cpu_cores_above_0.2``, ``rel_iqr_p50.<space>`` and ``rel_iqr.max`` (main workload, percent); with
    perplexity ``perplexity_archs``, ``perplexity.min`` and ``perplexity.max`` (of the default checkpoints) and
    ``checkpoints`` (all of them).
    """
    facts = {f"rows.{c}": _count(t.num_rows) for c, t in tables.items()}
    facts |= {"version": version} if version else {}
    if (archs := _frame(tables, "architectures")) is not None:
        facts |= _architecture_facts(archs)
    if (devices := _frame(tables, "devices")) is not None:
        facts |= {"devices": _count(devices.height),
                  "device_ids": ", ".join(f"`{d}`" for d in sorted(devices["device_id"]))}
    if "measurements" in tables and "summary" in tables:
        facts |= _measurement_facts(_frame(tables, "measurements"), _frame(tables, "summary"))
    if (ppl := _frame(tables, "perplexity")) is not None:
        facts |= _perplexity_facts(ppl, _frame(tables, "checkpoints"))
    return facts


def markdown_table(frame: pl.DataFrame) -> str:
    """``frame`` as a GitHub markdown table (floats as printed by ``str``; pre-format them)."""
    head = "| " + " | ".join(frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    rows = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join([head, rule, *rows])


def contents_table(tables: dict[str, pa.Table]) -> str:
    """Per device, space and workload: architectures, repeats, latency and repeat noise, memory (medians)."""
    if "summary" not in tables:
        return "No measurements in this release."
    noise = per_arch_noise(_frame(tables, "summary"))
    grouped = (noise.group_by("device_id", "space", *WORKLOAD)
               .agg(pl.len().alias("archs"), pl.col("n_latency").median().alias("repeats"),
                    pl.col("latency_ms_median").median().alias("latency_ms_p50"),
                    pl.col("rel_iqr").median().alias("rel_iqr_p50"), pl.col("rel_iqr").quantile(0.9, "linear")
                    .alias("rel_iqr_p90"), pl.col("peak_memory_mib").median().alias("memory_mib_p50"))
               .sort("device_id", "space", *WORKLOAD))
    rows = grouped.select(
        pl.format("`{}`", "device_id").alias("device"), pl.format("`{}`", "space").alias("space"),
        pl.format("{} b{} x {} {}", *WORKLOAD).alias("workload"), pl.col("archs").map_elements(_count, pl.String),
        pl.col("repeats").cast(pl.Int64), pl.col("latency_ms_p50").map_elements(_num, pl.String).alias("latency ms"),
        pl.col("rel_iqr_p50").map_elements(_pct, pl.String).alias("rel. IQR p50"),
        pl.col("rel_iqr_p90").map_elements(_pct, pl.String).alias("rel. IQR p90"),
        pl.col("memory_mib_p50").map_elements(_num, pl.String).fill_null("n/a").alias("memory MiB"))
    return markdown_table(rows)


def perplexity_table(tables: dict[str, pa.Table]) -> str:
    """Per space and checkpoint kind: the weights (a supernet with its steps and training tokens, marked when it is
    the default; standalone checkpoints pooled), architectures, evaluated tokens, perplexity range and median,
    accuracy median."""
    if "perplexity" not in tables:
        return "No perplexity in this release."
    ppl = _frame(tables, "perplexity")
    if (checkpoints := _frame(tables, "checkpoints")) is not None:
        described = checkpoints.select(
            "checkpoint_sha256",
            pl.when(pl.col("weights") == "standalone").then(pl.lit("standalone (one per architecture)"))
            .otherwise(pl.format("`{}`{}: supernet, {} steps, {}M tokens", "checkpoint_sha256",
                                 pl.when("default").then(pl.lit(" (default)")).otherwise(pl.lit("")),
                                 pl.col("train_steps").map_elements(_count, pl.String),
                                 (pl.col("tokens_seen") / 1e6).round(2))).alias("checkpoint"))
        ppl = ppl.join(described, on="checkpoint_sha256", how="left")
    else:
        ppl = ppl.with_columns(pl.format("`{}`", "checkpoint_sha256").alias("checkpoint"))
    grouped = (ppl.group_by("space", "checkpoint", "eval_split")
               .agg(pl.len().alias("archs"), pl.col("eval_tokens").median().alias("tokens"),
                    pl.col("perplexity").min().alias("lo"), pl.col("perplexity").median().alias("mid"),
                    pl.col("perplexity").max().alias("hi"), pl.col("accuracy").median().alias("acc"))
               .sort("space", "checkpoint", "eval_split"))
    rows = grouped.select(
        pl.format("`{}`", "space").alias("space"), pl.col("checkpoint"),
        pl.col("eval_split"), pl.col("archs").map_elements(_count, pl.String),
        pl.col("tokens").cast(pl.Int64).map_elements(_count, pl.String).alias("tokens per arch"),
        pl.col("lo").map_elements(_num, pl.String).alias("perplexity min"),
        pl.col("mid").map_elements(_num, pl.String).alias("median"),
        pl.col("hi").map_elements(_num, pl.String).alias("max"),
        pl.col("acc").map_elements(lambda x: _num(x, ".3f"), pl.String).alias("accuracy median"))
    return markdown_table(rows)


def _fmt_drift(frame: pl.DataFrame, ratio_label: str) -> pl.DataFrame:
    return frame.with_columns(pl.col("median_ratio").map_elements(lambda x: _num(x, ".3f"), pl.String)
                              .fill_null("n/a").alias(ratio_label),
                              pl.col("tau").map_elements(lambda x: _num(x, ".2f"), pl.String).fill_null("n/a"))


def _with_paired(shown: pl.DataFrame, frame: pl.DataFrame, ratio_label: str) -> pl.DataFrame:
    """``shown`` (rows of ``frame``) with ``ratio_label`` and ``paired tau``: ``frame``'s ``paired_ratio`` and
    ``paired_tau`` (the ratios to the paired reference), where any row has them; "not paired" where a row compares
    architectures without them, "n/a" where it compares none."""
    if not frame["paired_ratio"].is_not_null().any():
        return shown
    paired = _fmt_drift(frame.select(pl.col("paired_ratio").alias("median_ratio"), pl.col("paired_tau").alias("tau"),
                                     "archs"), ratio_label)
    missing = pl.when(pl.col("archs") == 0).then(pl.lit("n/a")).otherwise(pl.lit("not paired"))
    paired = paired.select(pl.when(pl.col("median_ratio").is_null()).then(missing).otherwise(pl.col(ratio_label))
                           .alias(ratio_label),
                           pl.when(pl.col("median_ratio").is_null()).then(missing).otherwise(pl.col("tau"))
                           .alias("paired tau"))
    return pl.concat([shown, paired], how="horizontal")


def reproducibility_table(tables: dict[str, pa.Table]) -> str:
    """Drift of the calibration panel within each session (end / start) and between sessions (later / earlier)."""
    from hwgpt_bench.loaders.reproducibility import session_drift, session_pairs

    if "panel" not in tables or "sessions" not in tables:
        return ("No calibration panels in this release: sessions and panels are recorded from schema 2.0.0 on, so "
                "its numbers come from one unrecorded host and session each and cannot be compared across them.")
    panel, sessions = _frame(tables, "panel"), _frame(tables, "sessions")
    drifts = session_drift(panel)
    drift = _fmt_drift(drifts, "end / start").select(
        pl.format("`{}`", "session_id").alias("session"), pl.format("`{}`", "device_id").alias("device"),
        pl.format("`{}`", "space").alias("space"), "archs", "end / start", pl.col("tau").alias("tau (start, end)"))
    drift = _with_paired(drift, drifts, "paired end / start")
    parts = ["Within each session (panel at its end against its start):", "", markdown_table(drift)]
    pairs = session_pairs(panel, sessions)
    if pairs.height:
        shown = _fmt_drift(pairs, "later / earlier").select(
            pl.format("`{}`", "space").alias("space"), pl.format("`{}`", "session_a").alias("earlier session"),
            pl.format("`{}`", "session_b").alias("later session"),
            pl.when(pl.col("same_device")).then(pl.lit("same device")).otherwise(pl.lit("other device"))
            .alias("devices"), "archs", "later / earlier", pl.col("tau").alias("tau"))
        shown = _with_paired(shown, pairs, "paired later / earlier")
        parts += ["", "Between sessions (panels at their starts):", "", markdown_table(shown)]
    return "\n".join(parts)


def process_spread_table(tables: dict[str, pa.Table]) -> str:
    """Per device and space: how far an architecture's median moves between profiling processes (panel), and, where
    the panel was paired with a reference, how far the median of its ratios to the reference moves."""
    from hwgpt_bench.loaders.reproducibility import process_spread

    if "panel" not in tables:
        return "No calibration panels in this release: the spread between processes cannot be measured."
    spread = process_spread(_frame(tables, "panel"))
    if not spread.height:
        return "No space was measured by two panel processes yet."
    rows = spread.select(
        pl.format("`{}`", "device_id").alias("device"), pl.format("`{}`", "space").alias("space"),
        pl.format("{} b{} x {} {}", *WORKLOAD).alias("workload"), "processes", "archs",
        pl.col("process_sd").map_elements(_pct, pl.String).alias("between processes (sd)"),
        pl.col("paired_sd").map_elements(_pct, pl.String, skip_nulls=True).fill_null("not paired")
        .alias("paired with the reference (sd)"),
        pl.col("repeat_sd").map_elements(_pct, pl.String).alias("from the repeats alone (sd)"))
    if spread["paired_sd"].null_count() == spread.height:  # no paired panel yet: no column of "not paired"
        rows = rows.drop("paired with the reference (sd)")
    return markdown_table(rows)


def training_table(tables: dict[str, pa.Table]) -> str:
    """Per supernet checkpoint: steps, tokens, held-out loss of the largest subnet at 80% of training and at its end,
    and the improvement over that last fifth (``checkpoints.last_fifth``; converged: below 1%)."""
    from hwgpt_bench.loaders.checkpoints import last_fifth

    if "training_curves" not in tables or "checkpoints" not in tables:
        return "No training curves in this release."
    checkpoints = _frame(tables, "checkpoints")
    fifth = last_fifth(_frame(tables, "training_curves"), checkpoints).filter(pl.col("weights") == "supernet")
    if not fifth.height:
        return "No supernet checkpoint has two held-out evaluations."
    rows = fifth.join(checkpoints.select("checkpoint_sha256", "tokens_seen", "train_dtype"), on="checkpoint_sha256")
    shown = rows.select(
        pl.format("`{}`", "space").alias("space"), pl.format("`{}`", "checkpoint_sha256").alias("checkpoint"),
        pl.col("train_steps").map_elements(_count, pl.String).alias("steps"),
        (pl.col("tokens_seen") / 1e6).map_elements(lambda x: _num(x, ".2f"), pl.String).alias("tokens (M)"),
        pl.col("train_dtype").alias("dtype"),
        pl.format("{} at step {}", pl.col("loss_early").map_elements(lambda x: _num(x, ".3f"), pl.String),
                  pl.col("step_early").map_elements(_count, pl.String)).alias("held-out loss, largest (80%)"),
        pl.format("{} at step {}", pl.col("loss_last").map_elements(lambda x: _num(x, ".3f"), pl.String),
                  pl.col("step_last").map_elements(_count, pl.String)).alias("at the end"),
        pl.col("improvement").map_elements(_pct, pl.String).alias("last fifth"),
        pl.when(pl.col("improvement") < 0.01).then(pl.lit("yes")).otherwise(pl.lit("no")).alias("converged (< 1%)"))
    return markdown_table(shown)


def _ground_truth_pairs(tables: dict[str, pa.Table]) -> pl.DataFrame | None:
    from hwgpt_bench.loaders.ground_truth import standalone_vs_inherited

    if any(name not in tables for name in ("perplexity", "checkpoints", "architectures")):
        return None
    pairs = standalone_vs_inherited(_frame(tables, "perplexity"), _frame(tables, "checkpoints"),
                                    _frame(tables, "architectures"))
    return pairs if pairs.height else None


def ground_truth_table(tables: dict[str, pa.Table]) -> str:
    """Per space and split: architectures trained alone, Kendall tau and Spearman rho between their standalone and
    inherited (default supernet) perplexities, the gap (standalone / inherited - 1) mean, sd and range, and how many
    of them on the supernet's Pareto front stay on the standalone front (``ground_truth.agreement``)."""
    from hwgpt_bench.loaders.ground_truth import agreement

    if (pairs := _ground_truth_pairs(tables)) is None:
        return "No standalone-trained architectures in this release."
    rows = pl.DataFrame(agreement(pairs))
    shown = rows.select(
        pl.format("`{}`", "space").alias("space"), pl.col("eval_split"),
        pl.col("n").map_elements(_count, pl.String).alias("archs trained alone"),
        pl.col("kendall_tau").map_elements(lambda x: _num(x, ".3f"), pl.String).alias("Kendall tau"),
        pl.col("spearman_rho").map_elements(lambda x: _num(x, ".3f"), pl.String).alias("Spearman rho"),
        pl.col("gap_mean").map_elements(_pct, pl.String).alias("gap mean"),
        pl.col("gap_sd").map_elements(_pct, pl.String).alias("gap sd"),
        pl.format("{} to {}", pl.col("gap_min").map_elements(_pct, pl.String),
                  pl.col("gap_max").map_elements(_pct, pl.String)).alias("gap range"),
        pl.format("{} of {}", "front_kept", "front").alias("supernet front kept standalone"))
    return markdown_table(shown)


def ground_truth_archs_table(tables: dict[str, pa.Table]) -> str:
    """Every architecture trained alone: parameters, inherited and standalone perplexity, the gap, and whether it is on
    the supernet's front (over all the space's architectures) and on the standalone front (among those trained
    alone). Empty when there are none (``ground_truth_table`` says so)."""
    if (pairs := _ground_truth_pairs(tables)) is None:
        return ""
    yes_no = {True: "yes", False: "no"}
    shown = pairs.select(
        pl.format("`{}`", "space").alias("space"), pl.format("`{}`", "arch_id").alias("arch_id"),
        (pl.col("params") / 1e6).map_elements(lambda x: _num(x, ".2f"), pl.String).alias("params (M)"),
        pl.col("inherited").map_elements(_num, pl.String).alias("inherited perplexity"),
        pl.col("standalone").map_elements(_num, pl.String).alias("standalone perplexity"),
        pl.col("gap").map_elements(_pct, pl.String).alias("gap"),
        pl.col("supernet_front").replace_strict(yes_no, return_dtype=pl.String).alias("supernet front"),
        pl.col("standalone_front").replace_strict(yes_no, return_dtype=pl.String).alias("standalone front"))
    return markdown_table(shown)


#: generated data tables of a card: ``<!-- table:<name>:start -->`` ... ``<!-- table:<name>:end -->``
DATA_TABLES: dict[str, Callable[[dict[str, pa.Table]], str]] = {
    "contents": contents_table,
    "perplexity": perplexity_table,
    "training": training_table,
    "ground_truth": ground_truth_table,
    "ground_truth_archs": ground_truth_archs_table,
    "reproducibility": reproducibility_table,
    "process_spread": process_spread_table,
}


def _fact_kinds() -> re.Pattern:
    spaces = "|".join(re.escape(s) for s in SPACES)
    names = ["version", "architectures", "spaces", "devices", "device_ids", "workloads", r"other_cpu_cores\.p99",
             r"rows\.other_cpu_cores_above_0\.2", r"rel_iqr\.max", "perplexity_archs", "checkpoints",
             r"perplexity\.(min|max)", rf"rows\.({'|'.join(SCHEMAS)})", rf"(archs|rel_iqr_p50)\.({spaces})"]
    return re.compile("^(" + "|".join(names) + ")$")


FACT_KINDS = _fact_kinds()
ABSENT = "n/a"  # what a known fact reads in a release that lacks its data (e.g. a space with no architectures)


def fact_value(name: str, facts: dict[str, str]) -> str:
    """The text of fact ``name``: its value, or ``n/a`` when this release lacks it; ``ValueError`` if unknown."""
    if name in facts:
        return facts[name]
    if not FACT_KINDS.match(name):
        raise ValueError(f"card: unknown fact {name!r}; facts are named like: {', '.join(sorted(facts))}")
    return ABSENT


def fill_facts(body: str, facts: dict[str, str]) -> str:
    """``body`` with every inline fact's text replaced by its value; ``ValueError`` naming an unknown fact."""
    return FACT.sub(lambda m: f"<!-- fact:{m[1]} -->{fact_value(m[1], facts)}<!-- /fact -->", body)


def fill_tables(body: str, tables: dict[str, pa.Table]) -> str:
    """``body`` with every generated data table recomputed; ``ValueError`` naming an unknown table."""
    unknown = sorted({name for name, _ in TABLE.findall(body)} - set(DATA_TABLES))
    if unknown:
        raise ValueError(f"card: unknown data table(s) {unknown}; allowed: {', '.join(DATA_TABLES)}")
    return TABLE.sub(lambda m: f"<!-- table:{m[1]}:start -->\n{DATA_TABLES[m[1]](tables)}\n"
                               f"<!-- table:{m[1]}:end -->", body)


def data_problems(text: str, tables: dict[str, pa.Table], where: str = README,
                  version: str | None = None) -> list[str]:
    """Each inline fact or data table of the card ``text`` that disagrees with ``tables`` / ``version`` (names it and
    both values)."""
    facts = card_facts(tables, version)
    problems = []
    for name, value in FACT.findall(text):
        try:
            expected = fact_value(name, facts)
        except ValueError as err:
            problems.append(f"{where}: {err}")
            continue
        if value != expected:
            problems.append(f"{where}: fact {name} says {value!r} but the tables give {expected!r}")
    for name, found in TABLE.findall(text):
        if name not in DATA_TABLES:
            problems.append(f"{where}: data table {name!r} is unknown (allowed: {', '.join(DATA_TABLES)})")
        elif found.strip() != DATA_TABLES[name](tables).strip():
            problems.append(f"{where}: data table {name} differs from the tables (rebuild the release)")
    return problems
