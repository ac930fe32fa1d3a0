"""Simulated hardware-aware multi-objective search: methods x seeds on one benchmark, resumable per (method, seed).

``run_search(settings, out)`` writes under ``out``:

- ``search.json``: the settings and the hypervolume normalisation (a rerun with other settings is refused, so parts of
  two experiments never mix);
- ``trajectories/<method>__seed<k>.parquet``: every evaluation of that run (``methods.Evaluator.records``) and
  ``.json`` next to it: wall seconds, the benchmark's and the optimiser's share (written last: a run counts as done
  when both exist, so an interrupted run is redone, never half-read);
- ``hypervolume.csv``: per method, the hypervolume after 10/25/50/100% of the budget, mean and standard error over
  seeds; ``hypervolume_curve.csv``: mean and standard error at every ``curve_step`` evaluations;
- ``hypervolume.png`` and ``fronts.png`` (with matplotlib): hypervolume over evaluations, final fronts.

The hypervolume of a run after ``k`` evaluations is that of the noise-free answers (``<objective>`` columns) of its
first ``k`` evaluated architectures, so noisy observations (``noise="sample"``) steer a method but do not score it.
Normalisation (``pareto.Normalisation``): bounds = min and max of the noise-free answers over a fixed reference set
(``domain="measured"``: every candidate; else ``REFERENCE_SAMPLE`` seeded architectures of the space), reference point
1.1 per normalised objective.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from hwgpt_bench.files import atomic_output, write_json_atomic
from hwgpt_bench.metrics import METRICS

from .interface import EXACT_OBJECTIVES, Benchmark
from .methods import check_methods, run_method
from .pareto import Normalisation, hypervolume_curve, minimisation_matrix, nondominated

log = logging.getLogger(__name__)

FRACTIONS = (0.1, 0.25, 0.5, 1.0)  # of the budget, for the hypervolume table
REFERENCE_SAMPLE = 5000  # architectures (seed 0) whose noise-free answers bound the normalisation in domain "space"
SETTINGS_FILE = "search.json"


@dataclass(frozen=True)
class SearchSettings:
    """One experiment: a benchmark (space, device, objectives, workload, mode, noise, domain) and a protocol
    (methods, budget evaluations per run, seeds ``0 .. seeds - 1``)."""

    space: str
    device: str | None
    objectives: tuple[str, ...]
    methods: tuple[str, ...]
    budget: int
    seeds: int
    mode: str = "surrogate"
    noise: str = "none"
    domain: str | None = None
    workload: dict | None = None
    release: str = "dataset"
    models: str | None = None
    device_models: str | None = None
    curve_step: int = field(default=0)  # 0: budget // 50 (at least 1)

    def __post_init__(self) -> None:
        for name in ("budget", "seeds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: a positive integer expected, got {value!r}")
        object.__setattr__(self, "objectives", tuple(self.objectives))
        object.__setattr__(self, "methods", check_methods(tuple(self.methods)))
        if len(self.objectives) < 2:
            raise ValueError(f"objectives: a search needs at least two, got {list(self.objectives)}")

    @property
    def step(self) -> int:
        return self.curve_step or max(1, self.budget // 50)

    def benchmark(self) -> Benchmark:
        return Benchmark(self.space, self.device, self.objectives, workload=self.workload, noise=self.noise,
                         mode=self.mode, domain=self.domain, models=self.models, release=self.release,
                         device_models=self.device_models)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))


def _run_name(method: str, seed: int) -> str:
    return f"{method}__seed{seed}"


def reference_normalisation(bench: Benchmark) -> Normalisation:
    """Bounds from the noise-free answers of the benchmark's reference set (see the module docstring)."""
    if bench.domain == "measured":
        archs, source = bench.candidates(), f"all {len(bench.candidates())} measured candidates, noise-free"
    else:
        archs = bench.sample(REFERENCE_SAMPLE, seed=0)
        source = f"{REFERENCE_SAMPLE} architectures sampled with seed 0, noise-free"
    values = bench.evaluate(archs, noise="none")
    signs = {o.name: o.lower_is_better for o in bench.objectives}
    points = minimisation_matrix(values, bench.objective_names, signs)
    return Normalisation.from_points(points, bench.objective_names, f"{bench.mode} answers of {source}")


def _check_settings(out: Path, settings: SearchSettings, normalisation: Normalisation) -> None:
    """Write ``search.json`` or check that the one there describes the same experiment."""
    path = out / SETTINGS_FILE
    wanted = {"settings": settings.to_dict(), "normalisation": normalisation.to_dict()}
    if path.is_file():
        found = json.loads(path.read_text(encoding="utf-8"))
        differ = sorted(k for k in wanted["settings"] if found.get("settings", {}).get(k) != wanted["settings"][k])
        if differ:
            raise ValueError(f"{path}: another experiment is in {out} (settings differ in {differ}); choose another "
                             "--out or delete it")
        return
    write_json_atomic(wanted, path)


def read_normalisation(out: str | Path) -> Normalisation:
    """The hypervolume normalisation that ``run_search`` wrote to ``out/search.json``."""
    stored = json.loads((Path(out) / SETTINGS_FILE).read_text(encoding="utf-8"))["normalisation"]
    return Normalisation(tuple(stored["objectives"]), tuple(stored["lower"]), tuple(stored["upper"]),
                         tuple(stored["reference"]), stored["source"])


def _done(out: Path, method: str, seed: int) -> bool:
    stem = out / "trajectories" / _run_name(method, seed)
    return stem.with_suffix(".parquet").is_file() and stem.with_suffix(".json").is_file()


def _run_one(bench: Benchmark, settings: SearchSettings, method: str, seed: int, out: Path) -> None:
    evaluator, wall = run_method(method, bench, settings.budget, seed)
    frame = pl.DataFrame(evaluator.records).with_columns(pl.lit(method).alias("method"), pl.lit(seed).alias("seed"))
    stem = out / "trajectories" / _run_name(method, seed)
    with atomic_output(stem.with_suffix(".parquet")) as tmp:
        frame.write_parquet(tmp)
    timing = {"method": method, "seed": seed, "evaluations": len(evaluator.records), "wall_s": wall,
              "benchmark_s": evaluator.benchmark_s, "optimiser_s": max(wall - evaluator.benchmark_s, 0.0)}
    write_json_atomic(timing, stem.with_suffix(".json"))


def run_search(settings: SearchSettings, out: str | Path, progress: bool = True) -> pl.DataFrame:
    """Run every (method, seed) not yet done under ``out``, then write the tables and plots; returns the
    hypervolume table (``hypervolume_table``)."""
    out = Path(out)
    bench = settings.benchmark()
    normalisation = reference_normalisation(bench)
    _check_settings(out, settings, normalisation)
    todo = [(m, s) for m in settings.methods for s in range(settings.seeds) if not _done(out, m, s)]
    log.info("search on %s: %d of %d runs to do", bench, len(todo), len(settings.methods) * settings.seeds)
    bar = _progress(len(todo), progress)
    for method, seed in todo:
        _run_one(bench, settings, method, seed, out)
        bar.update(1)
    bar.close()
    trajectories = read_trajectories(out)
    table = hypervolume_table(trajectories, settings, normalisation)
    curves = hypervolume_curves(trajectories, settings, normalisation)
    _write_csv(table, out / "hypervolume.csv")
    _write_csv(curves, out / "hypervolume_curve.csv")
    plot_search(out, settings, curves, final_fronts(trajectories, settings), bench)
    return table


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):
    if not enabled or total == 0:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc="search runs", unit="run")


def _write_csv(frame: pl.DataFrame, path: Path) -> None:
    with atomic_output(path) as tmp:
        frame.write_csv(tmp)


def read_trajectories(out: str | Path) -> pl.DataFrame:
    """Every finished run's trajectory under ``out`` (sorted by method, seed, eval)."""
    folder = Path(out) / "trajectories"
    files = sorted(p for p in folder.glob("*.parquet") if p.with_suffix(".json").is_file())
    if not files:
        raise ValueError(f"{folder}: no finished run")
    return pl.concat([pl.read_parquet(p) for p in files], how="vertical").sort("method", "seed", "eval")


def read_timings(out: str | Path) -> pl.DataFrame:
    """Wall, benchmark and optimiser seconds of every finished run under ``out``."""
    folder = Path(out) / "trajectories"
    rows = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]
    return pl.DataFrame(rows)


def _run_points(run: pl.DataFrame, objectives: Sequence[str], signs: Mapping[str, bool]) -> np.ndarray:
    return minimisation_matrix({n: run[n].to_numpy() for n in objectives}, objectives, signs)


def _signs(settings: SearchSettings) -> dict[str, bool]:
    return {n: True if n in EXACT_OBJECTIVES else METRICS[n].lower_is_better for n in settings.objectives}


def _per_run_hv(trajectories: pl.DataFrame, settings: SearchSettings, normalisation: Normalisation,
                at: Sequence[int]) -> pl.DataFrame:
    """One row per (method, seed, evaluations) with the hypervolume of the first ``evaluations``."""
    rows, signs = [], _signs(settings)
    for (method, seed), run in trajectories.group_by("method", "seed", maintain_order=True):
        points = _run_points(run, settings.objectives, signs)
        for k, hv in zip(at, hypervolume_curve(points, normalisation, at), strict=True):
            rows.append({"method": method, "seed": seed, "evaluations": k, "hypervolume": hv})
    return pl.DataFrame(rows)


def _mean_se(per_run: pl.DataFrame, by: list[str]) -> pl.DataFrame:
    return (per_run.group_by(by, maintain_order=True)
            .agg(pl.col("hypervolume").mean().alias("hv_mean"),
                 (pl.col("hypervolume").std(ddof=1) / pl.len().sqrt()).alias("hv_se"),
                 pl.len().alias("seeds"))
            .sort(by))


def hypervolume_table(trajectories: pl.DataFrame, settings: SearchSettings,
                      normalisation: Normalisation) -> pl.DataFrame:
    """Per method and fraction of the budget: evaluations, hypervolume mean and standard error over seeds."""
    at = sorted({max(1, math.ceil(f * settings.budget)) for f in FRACTIONS})
    per_run = _per_run_hv(trajectories, settings, normalisation, at)
    table = _mean_se(per_run, ["method", "evaluations"])
    fraction = {max(1, math.ceil(f * settings.budget)): f for f in FRACTIONS}
    return table.with_columns(pl.col("evaluations").replace_strict(fraction).alias("budget_fraction"))


def hypervolume_curves(trajectories: pl.DataFrame, settings: SearchSettings,
                       normalisation: Normalisation) -> pl.DataFrame:
    """Per method, hypervolume mean and standard error over seeds every ``settings.step`` evaluations."""
    at = sorted({*range(settings.step, settings.budget + 1, settings.step), settings.budget})
    return _mean_se(_per_run_hv(trajectories, settings, normalisation, at), ["method", "evaluations"])


def final_fronts(trajectories: pl.DataFrame, settings: SearchSettings) -> dict[str, np.ndarray]:
    """Per method, the nondominated noise-free points ``(K, M)`` (minimised) of all its seeds' evaluations."""
    signs, fronts = _signs(settings), {}
    for (method,), runs in trajectories.group_by("method", maintain_order=True):
        points = _run_points(runs, settings.objectives, signs)
        fronts[method] = points[nondominated(points)]
    return fronts


def format_table(table: pl.DataFrame, normalisation: Normalisation) -> str:
    """The hypervolume table as text, with the normalisation it depends on."""
    lines = [f"{'method':<16} {'evals':>6} {'fraction':>8} {'HV mean':>9} {'HV se':>8} {'seeds':>5}"]
    for r in table.iter_rows(named=True):
        se = "n/a" if r["hv_se"] is None else f"{r['hv_se']:.4f}"
        lines.append(f"{r['method']:<16} {r['evaluations']:>6} {r['budget_fraction']:>8.2f} {r['hv_mean']:>9.4f} "
                     f"{se:>8} {r['seeds']:>5}")
    bounds = ", ".join(f"{n} [{lo:.4g}, {hi:.4g}]" for n, lo, hi in
                       zip(normalisation.objectives, normalisation.lower, normalisation.upper, strict=True))
    lines.append(f"(hypervolume of the noise-free answers, normalised per objective to [0, 1] by {bounds} "
                 f"(signed so that lower is better) from {normalisation.source}; reference point "
                 f"{list(normalisation.reference)})")
    return "\n".join(lines)


# ---- plots -------------------------------------------------------------------------------------------------------
def plot_search(out: Path, settings: SearchSettings, curves: pl.DataFrame, fronts: dict[str, np.ndarray],
                bench: Benchmark) -> list[Path]:
    """``hypervolume.png`` (``curves``: ``hypervolume_curves``) and ``fronts.png`` (``fronts``: ``final_fronts``)
    under ``out``; nothing, with a log line, without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed: no search plots (pip install 'hw-gpt-bench[plots]')")
        return []
    fig, ax = plt.subplots(figsize=(6, 4))
    for (method,), c in curves.group_by("method", maintain_order=True):
        x, y, se = c["evaluations"].to_numpy(), c["hv_mean"].to_numpy(), c["hv_se"].fill_null(0).to_numpy()
        ax.plot(x, y, label=method)
        ax.fill_between(x, y - se, y + se, alpha=0.2)
    ax.set(xlabel="evaluations", ylabel="hypervolume (normalised)", title=f"{settings.space}: {settings.mode} mode")
    ax.legend(fontsize=8)
    paths = [out / "hypervolume.png"]
    _save(fig, paths[0])
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, front in fronts.items():
        order = np.argsort(front[:, 0])
        ax.step(front[order, 0], front[order, 1], where="post", marker=".", label=method)
    signs = [1 if o.lower_is_better else -1 for o in bench.objectives[:2]]
    ax.set(xlabel=f"{'' if signs[0] > 0 else '-'}{settings.objectives[0]}",
           ylabel=f"{'' if signs[1] > 0 else '-'}{settings.objectives[1]}", title="final fronts (noise-free)")
    ax.legend(fontsize=8)
    paths.append(out / "fronts.png")
    _save(fig, paths[1])
    return paths


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
