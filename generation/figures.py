"""Figures and summary tables made from a release (polars + matplotlib; no torch).

``hwgpt-bench figures`` writes the card's figures; ``hwgpt-bench demo`` (the README's main job) prints the per-space,
per-device summary and the measured perplexity-latency Pareto front, and writes its plot.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import polars as pl

from hwgpt_bench.loaders.io import load_table, read_manifest
from hwgpt_bench.metrics import MAIN_PHASE

log = logging.getLogger(__name__)



def per_arch_latency(root: str | Path = "dataset") -> pl.DataFrame:
    """One row per (arch, device, workload): median/IQR of the repeats, relative IQR, params and space.

    Columns: arch_id, space, device_id, phase, batch_size, seq_len, dtype, latency_ms_median (ms),
    latency_ms_iqr (ms), rel_iqr (IQR / median, unitless), peak_memory_mib (MiB), params (count).
    """
    summary = load_table("summary", root)
    archs = load_table("architectures", root).select("arch_id", "params")
    return (summary.join(archs, on="arch_id", how="left")
            .with_columns((pl.col("latency_ms_iqr") / pl.col("latency_ms_median")).alias("rel_iqr")))


def main_workload(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows of the most-measured forward workload per (space, device): the comparable core of the release (ties go
    to the smaller batch, then the shorter sequence, then the dtype's name)."""
    counts = (frame.filter(pl.col("phase") == MAIN_PHASE)
              .group_by("space", "device_id", "batch_size", "seq_len", "dtype").len()
              .sort(["len", "batch_size", "seq_len", "dtype"], descending=[True, False, False, False])
              .unique(["space", "device_id"], keep="first", maintain_order=True))
    return frame.join(counts.drop("len"), on=["space", "device_id", "batch_size", "seq_len", "dtype"], how="semi")\
        .filter(pl.col("phase") == MAIN_PHASE)


def space_device_summary(frame: pl.DataFrame) -> pl.DataFrame:
    """Per (space, device) on the main workload: archs, latency quantiles (ms), median and 90th percentile of the
    relative IQR of the repeats (unitless), median peak memory (MiB)."""
    workload = pl.format("b{} s{} {}", "batch_size", "seq_len", "dtype").alias("workload")
    return (main_workload(frame).group_by("space", "device_id", workload)
            .agg(pl.len().alias("archs"),
                 pl.col("latency_ms_median").quantile(0.1).alias("lat_p10_ms"),
                 pl.col("latency_ms_median").median().alias("lat_p50_ms"),
                 pl.col("latency_ms_median").quantile(0.9).alias("lat_p90_ms"),
                 pl.col("rel_iqr").median().alias("rel_iqr_p50"),
                 pl.col("rel_iqr").quantile(0.9).alias("rel_iqr_p90"),
                 pl.col("peak_memory_mib").median().alias("mem_p50_mib"))
            .sort("device_id", "space"))


def workload_scaling(frame: pl.DataFrame) -> pl.DataFrame:
    """How latency scales with the workload, on the architectures measured in more than one workload.

    One row per (space, device, phase, batch_size, seq_len, dtype) with: ``archs``; ``lat_p50_ms``, the median over
    those architectures of their median latency (ms); ``ms_per_token``, the same per token processed (ms; batch x
    seq_len tokens for ``forward`` and ``prefill``, batch_size for ``decode``: one new token per sequence); and
    ``ratio_to_main``, the median of each architecture's latency divided by its own main-workload latency (unitless).
    Empty when no architecture has more than one workload.
    """
    keys = ["space", "device_id", "phase", "batch_size", "seq_len", "dtype"]
    main = main_workload(frame).select("arch_id", "device_id", pl.col("latency_ms_median").alias("main_ms"))
    several = frame.group_by("arch_id", "device_id").len().filter(pl.col("len") > 1).drop("len")
    tokens = pl.when(pl.col("phase") == "decode").then(pl.col("batch_size")) \
        .otherwise(pl.col("batch_size") * pl.col("seq_len"))
    return (frame.join(several, on=["arch_id", "device_id"], how="semi")
            .join(main, on=["arch_id", "device_id"], how="inner")
            .group_by(keys)
            .agg(pl.len().alias("archs"), pl.col("latency_ms_median").median().alias("lat_p50_ms"),
                 (pl.col("latency_ms_median") / tokens).median().alias("ms_per_token"),
                 (pl.col("latency_ms_median") / pl.col("main_ms")).median().alias("ratio_to_main"))
            .sort(keys))


def pareto_front(frame: pl.DataFrame, x: str, y: str) -> pl.DataFrame:
    """Rows not dominated in (``x``, ``y``), both minimised; sorted by ``x``.

    A row is on the front when no other row is at least as good in both and strictly better in one.
    """
    ordered = frame.drop_nulls([x, y]).sort([x, y])
    best_y = float("inf")
    keep = []
    for i, value in enumerate(ordered[y].to_list()):
        if value < best_y:
            keep.append(i)
            best_y = value
    return ordered[keep]


def perplexity_latency(root: str | Path = "dataset", space: str = "gpt-nano") -> pl.DataFrame:
    """Architectures of ``space`` with both perplexity and a main-workload latency, one row per device.

    Empty when the release has no ``perplexity`` config yet.
    """
    if "perplexity" not in read_manifest(root)["configs"]:
        return pl.DataFrame()
    ppl = load_table("perplexity", root).filter(pl.col("space") == space).select("arch_id", "perplexity", "accuracy")
    lat = main_workload(per_arch_latency(root)).filter(pl.col("space") == space)
    return lat.join(ppl, on="arch_id", how="inner")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pareto(data: pl.DataFrame, path: Path) -> Path:
    """Scatter of perplexity vs median latency per device, with each device's Pareto front as a step line."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for device, group in data.group_by("device_id", maintain_order=True):
        ax.scatter(group["latency_ms_median"], group["perplexity"], s=6, alpha=0.4, label=f"{device[0]} archs")
        front = pareto_front(group, "latency_ms_median", "perplexity")
        ax.step(front["latency_ms_median"], front["perplexity"], where="post", lw=1.5, label=f"{device[0]} front")
    ax.set(xlabel="median latency (ms)", ylabel="held-out perplexity", xscale="log",
           title="gpt-nano: perplexity vs CPU latency (measured)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_latency_distribution(frame: pl.DataFrame, path: Path) -> Path:
    """Box plot of per-architecture median latency for each (space, device) on the main workload (log scale)."""
    plt = _plt()
    main = main_workload(frame).sort("params")
    groups = main.group_by("device_id", "space", maintain_order=True).agg(pl.col("latency_ms_median"),
                                                                          pl.col("params").median())
    groups = groups.sort("device_id", "params")
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * groups.height), 4.5))
    ax.boxplot(groups["latency_ms_median"].to_list(), showfliers=True)
    ax.set_xticks(range(1, groups.height + 1),
                  [f"{s}\n{d}" for s, d in zip(groups["space"], groups["device_id"], strict=True)], fontsize=7)
    ax.set(yscale="log", ylabel="median latency per architecture (ms)", title="Latency distribution per space")
    return _save(fig, path)


def plot_noise_vs_size(frame: pl.DataFrame, path: Path) -> Path:
    """Relative IQR of the repeats (IQR / median) against parameter count, per space, main workload."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    from matplotlib.ticker import PercentFormatter

    floor = 1e-3  # an IQR of 0 (identical repeats) is drawn at 0.1% so that the log axis can show it
    for space, group in main_workload(frame).group_by("space", maintain_order=True):
        ax.scatter(group["params"], group["rel_iqr"].clip(lower_bound=floor), s=6, alpha=0.5, label=space[0])
    ax.set(xscale="log", yscale="log", xlabel="parameters", ylabel="IQR / median of repeats (log scale)",
           title="Repeat noise vs model size")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.legend(fontsize=8, markerscale=2)
    return _save(fig, path)


def plot_workload_scaling(scaling: pl.DataFrame, path: Path) -> Path:
    """Median latency against sequence length, one line per (space, device, phase, batch size), log-log axes."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, group in scaling.group_by("space", "device_id", "phase", "batch_size", maintain_order=True):
        space, device, phase, batch = key
        group = group.sort("seq_len")
        ax.plot(group["seq_len"], group["lat_p50_ms"], marker="o", ms=3,
                label=f"{space} {device} {phase} b{batch} ({group['archs'].min()} archs)")
    ax.set(yscale="log", xlabel="sequence length (tokens)", ylabel="median latency (ms)",
           title="Latency vs workload (architectures measured in several workloads)")
    ax.set_xscale("log", base=2)
    seq_lens = sorted(set(scaling["seq_len"].to_list()))
    ax.set_xticks(seq_lens, [str(v) for v in seq_lens])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    _plt().close(fig)
    log.debug("wrote %s", path)
    return path


def write_figures(root: str | Path, out: str | Path) -> list[Path]:
    """The release figures: latency distribution, repeat noise vs size, latency vs workload (where architectures
    have several workloads), perplexity-latency Pareto front (where the release has perplexity)."""
    frame = per_arch_latency(root)
    out = Path(out)
    paths = [plot_latency_distribution(frame, out / "latency_distribution.png"),
             plot_noise_vs_size(frame, out / "noise_vs_size.png")]
    scaling = workload_scaling(frame)
    if scaling.height:
        paths.append(plot_workload_scaling(scaling, out / "workload_scaling.png"))
    ppl = perplexity_latency(root)
    if ppl.height:
        paths.append(plot_pareto(ppl, out / "pareto_gpt_nano.png"))
    return paths


def figures_from_args(args: argparse.Namespace) -> int:
    """``hwgpt-bench figures``."""
    for path in write_figures(args.dataset, args.out):
        print(path)
    return 0


def demo_from_args(args: argparse.Namespace) -> int:
    """``hwgpt-bench demo``: the README's main job on the shipped release."""
    frame = per_arch_latency(args.dataset)
    with pl.Config(tbl_rows=60, tbl_cols=12, tbl_width_chars=160, float_precision=3, tbl_hide_dataframe_shape=True):
        print(f"# Per space and device (main workload: {MAIN_PHASE}, per-architecture medians of the repeats)")
        print(space_device_summary(frame))
        print(f"wrote {plot_latency_distribution(frame, Path(args.out) / 'latency_distribution.png')}")
        scaling = workload_scaling(frame)
        if scaling.height:
            print("\n# Latency vs workload (architectures measured in several workloads; medians over them; "
                  "ratio to each architecture's main workload)")
            print(scaling)
        ppl = perplexity_latency(args.dataset)
        if not ppl.height:
            print("no perplexity rows in this release yet: no perplexity-latency Pareto front")
            return 0
        for device, group in ppl.group_by("device_id", maintain_order=True):
            front = pareto_front(group, "latency_ms_median", "perplexity")
            print(f"\n# gpt-nano Pareto front on {device[0]}: {front.height} of {group.height} architectures")
            print(front.select("arch_id", "params", "latency_ms_median", "perplexity", "accuracy"))
        print(f"wrote {plot_pareto(ppl, Path(args.out) / 'pareto_gpt_nano.png')}")
    return 0
