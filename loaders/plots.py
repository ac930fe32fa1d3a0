"""Figures of a release and the demo text: what ``hwgpt-bench demo`` and ``hwgpt-bench figures`` show.

The tables come from ``loaders.analysis`` (polars only). matplotlib is imported only inside the plotting functions,
so this module imports, and ``demo`` prints every table, with the base dependencies alone: without matplotlib the
demo says in one line that it skipped the plots, and ``figures`` is a ``ValueError`` naming the ``plots`` extra.
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from hwgpt_bench.loaders.analysis import (
    main_workload,
    pareto_front,
    per_arch_latency,
    perplexity_latency,
    space_device_summary,
    workload_scaling,
)
from hwgpt_bench.loaders.ground_truth import standalone_vs_inherited
from hwgpt_bench.loaders.io import data_files, load_table
from hwgpt_bench.metrics import MAIN_PHASE

log = logging.getLogger(__name__)

PLOTS_INSTALL = 'pip install "hw-gpt-bench[plots]"'
# how the demo prints its tables (every row and column of the shipped release, 3 decimals)
TABLE_CONFIG = dict(tbl_rows=60, tbl_cols=12, tbl_width_chars=160, float_precision=3, tbl_hide_dataframe_shape=True)


def _plt():
    """``matplotlib.pyplot`` on the non-interactive Agg backend; ``ValueError`` naming the extra when missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ValueError(f"matplotlib is not installed ({err}); the figures need the plots extra: "
                         f"{PLOTS_INSTALL}") from err
    return plt


def plots_available() -> bool:
    """True when matplotlib can be imported (the ``plots`` extra, also part of ``generation``)."""
    try:
        _plt()
    except ValueError:
        return False
    return True


def plot_pareto(data: pl.DataFrame, path: Path) -> Path:
    """Scatter of perplexity vs latency (ms, log axis: ``perplexity_latency``'s ``latency_ms``, paired where the
    device was measured so) per device, with each device's Pareto front as a step line; ``data`` as returned by
    ``perplexity_latency``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for device, group in data.group_by("device_id", maintain_order=True):
        kind = " (paired)" if group["latency_kind"][0] == "paired" else ""
        ax.scatter(group["latency_ms"], group["perplexity"], s=6, alpha=0.4, label=f"{device[0]}{kind} archs")
        front = pareto_front(group, "latency_ms", "perplexity")
        ax.step(front["latency_ms"], front["perplexity"], where="post", lw=1.5, label=f"{device[0]}{kind} front")
    ax.set(xlabel="latency (ms; median, or paired where measured so)", ylabel="held-out perplexity", xscale="log",
           title="gpt-nano: perplexity vs CPU latency (measured)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_training_curves(curves: pl.DataFrame, checkpoints: pl.DataFrame, path: Path) -> Path:
    """Held-out loss (nats per token) against training tokens (millions) of every supernet subnet evaluated during
    training, one panel per supernet checkpoint (``training_curves`` and ``checkpoints`` of a release)."""
    plt = _plt()
    supernets = checkpoints.filter(pl.col("weights") == "supernet").sort("tokens_seen")
    fig, axes = plt.subplots(1, max(1, supernets.height), figsize=(5 * max(1, supernets.height), 4), squeeze=False)
    for ax, row in zip(axes[0], supernets.iter_rows(named=True), strict=False):
        held = curves.filter((pl.col("checkpoint_sha256") == row["checkpoint_sha256"]) & (pl.col("split") == "heldout"))
        for (subnet,), group in held.sort("step").group_by("subnet", maintain_order=True):
            ax.plot(group["tokens_seen"] / 1e6, group["loss"], marker=".", label=subnet)
        default = " (default)" if row["default"] else ""
        ax.set(xlabel="training tokens (M)", ylabel="held-out loss (nats/token)",
               title=f"{row['space']} supernet {row['checkpoint_sha256']}{default}: {row['train_steps']} steps")
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_ground_truth(pairs: pl.DataFrame, path: Path) -> Path:
    """Two panels per ``ground_truth.standalone_vs_inherited`` pairs (one space): standalone against inherited
    perplexity with the identity line, and both perplexities against parameters (millions, log axis), each
    architecture's two points joined, those on the supernet's Pareto front marked."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    front = pairs.filter(pl.col("supernet_front"))
    rest = pairs.filter(~pl.col("supernet_front"))
    for part, label, marker in ((rest, "spread over the space", "o"), (front, "on the supernet front", "*")):
        left.scatter(part["inherited"], part["standalone"], marker=marker, s=40, label=label)
    lo = min(pairs["inherited"].min(), pairs["standalone"].min())
    hi = max(pairs["inherited"].max(), pairs["standalone"].max())
    left.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="equal")
    left.set(xlabel="inherited perplexity (supernet, sliced)", ylabel="standalone perplexity (trained alone)",
             title=f"{pairs['space'][0]}: {pairs.height} architectures trained alone")
    left.legend(fontsize=8)
    millions = pairs["params"] / 1e6
    for x, a, b in zip(millions, pairs["inherited"], pairs["standalone"], strict=True):
        right.plot([x, x], [a, b], color="lightgrey", lw=1, zorder=0)
    right.scatter(millions, pairs["inherited"], s=18, label="inherited")
    right.scatter(millions, pairs["standalone"], s=18, label="standalone")
    right.scatter(front["params"] / 1e6, front["standalone"], s=80, facecolors="none", edgecolors="black",
                  label="supernet front (standalone value)")
    right.set(xlabel="parameters (M)", ylabel="held-out perplexity", xscale="log",
              title="perplexity vs size: inherited and trained alone")
    from matplotlib.ticker import FormatStrFormatter

    right.xaxis.set_major_formatter(FormatStrFormatter("%g"))  # 2, 3, 4, 6 rather than 2 x 10^0
    right.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
    right.legend(fontsize=8)
    return _save(fig, path)


def plot_latency_distribution(frame: pl.DataFrame, path: Path) -> Path:
    """Box plot of per-architecture median latency (ms, log axis) for each (space, device) on the main workload."""
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
    """Relative IQR of the repeats (IQR / median, shown in %) against parameter count, per space, main workload."""
    plt = _plt()
    from matplotlib.ticker import PercentFormatter

    fig, ax = plt.subplots(figsize=(7, 4.5))
    floor = 1e-3  # an IQR of 0 (identical repeats) is drawn at 0.1% so that the log axis can show it
    for space, group in main_workload(frame).group_by("space", maintain_order=True):
        ax.scatter(group["params"], group["rel_iqr"].clip(lower_bound=floor), s=6, alpha=0.5, label=space[0])
    ax.set(xscale="log", yscale="log", xlabel="parameters", ylabel="IQR / median of repeats (log scale)",
           title="Repeat noise vs model size")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.legend(fontsize=8, markerscale=2)
    return _save(fig, path)


def plot_workload_scaling(scaling: pl.DataFrame, path: Path) -> Path:
    """Median latency (ms) against sequence length (tokens), one line per (space, device, phase, batch size),
    log-log axes; ``scaling`` as returned by ``workload_scaling``."""
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
    have several workloads), perplexity-latency Pareto front (where the release has perplexity), the supernets'
    held-out loss curves (where it has training curves), standalone against inherited perplexity (where architectures
    were trained alone).

    ``ValueError`` naming the ``plots`` extra, before anything is read or written, when matplotlib is missing.
    """
    _plt()
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
    if data_files("training_curves", root) and data_files("checkpoints", root):
        paths.append(plot_training_curves(load_table("training_curves", root), load_table("checkpoints", root),
                                          out / "training_curves.png"))
    if data_files("checkpoints", root) and data_files("perplexity", root):
        pairs = standalone_vs_inherited(load_table("perplexity", root), load_table("checkpoints", root),
                                        load_table("architectures", root))
        for (space, split), group in pairs.group_by("space", "eval_split", maintain_order=True):
            suffix = "" if split == "heldout" else f"_{split}"
            paths.append(plot_ground_truth(group, out / f"ground_truth_{space.replace('-', '_')}{suffix}.png"))
    return paths


def demo_text(root: str | Path = "dataset", out: str | Path = "figures", plots: bool | None = None) -> str:
    """The README's main job as text: the per space/device summary, the workload-scaling table (when architectures
    have several workloads) and the gpt-nano Pareto front per device, with a ``wrote PATH`` line after each plot.

    ``plots``: write the two plots under ``out`` (None: when matplotlib is installed). Without them the text ends
    with one line saying that they were skipped and how to get them.
    """
    plots = plots_available() if plots is None else plots
    out = Path(out)
    frame = per_arch_latency(root)
    lines: list[str] = []
    with pl.Config(**TABLE_CONFIG):
        lines += [f"# Per space and device (main workload: {MAIN_PHASE}, per-architecture medians of the repeats)",
                  str(space_device_summary(frame))]
        if plots:
            lines.append(f"wrote {plot_latency_distribution(frame, out / 'latency_distribution.png')}")
        scaling = workload_scaling(frame)
        if scaling.height:
            lines += ["\n# Latency vs workload (architectures measured in several workloads; medians over them; "
                      "ratio to each architecture's main workload)", str(scaling)]
        ppl = perplexity_latency(root)
        if not ppl.height:
            lines.append("no perplexity rows in this release yet: no perplexity-latency Pareto front")
        else:
            for device, group in ppl.group_by("device_id", maintain_order=True):
                front = pareto_front(group, "latency_ms", "perplexity")
                kind = "paired latency" if group["latency_kind"][0] == "paired" else "median latency"
                lines += [f"\n# gpt-nano Pareto front on {device[0]}: {front.height} of {group.height} architectures "
                          f"({kind})", str(front.select("arch_id", "params", "latency_ms", "perplexity", "accuracy"))]
            if plots:
                lines.append(f"wrote {plot_pareto(ppl, out / 'pareto_gpt_nano.png')}")
    if not plots:
        lines.append(f"plots skipped: matplotlib is not installed ({PLOTS_INSTALL} gives them)")
    return "\n".join(lines)

