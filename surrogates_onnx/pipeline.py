"""Train every surrogate of a release into ``<out>/models/*.onnx`` + ``<out>/manifest.json``.

``hwgpt-bench train-surrogates --dataset dataset --out surrogates_onnx`` runs ``train_surrogates``: per target
(``data.load_targets``) it splits by architecture, fits its model (the physical cost model of ``physical`` for
latency, energy and tensor peak, pooled over the spaces of a device and workload; the ridge surrogate of ``ridge`` for
process peak memory, perplexity and accuracy; the HGB CQR of ``training`` for metrics in neither of the recipe's
lists), exports one ONNX graph (``export``), checks parity of the graph with the Python model on the test
architectures (relative difference < 1e-4, no coverage flips; else ``RuntimeError``), measures test coverage and
widths (``intervals``) and writes a manifest entry. Evaluating the trained models against baselines
(``hwgpt-bench evaluate-surrogates``) is ``evaluation``'s.
Needs the ``surrogates`` extra.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from hwgpt_bench.loaders.io import MANIFEST as DATASET_MANIFEST
from hwgpt_bench.loaders.io import read_manifest as read_dataset_manifest
from hwgpt_bench.metrics import TRANSFORMS, workload_text
from hwgpt_bench.surrogates_onnx import data, export, physical, ridge, runtime, training
from hwgpt_bench.surrogates_onnx.data import Target
from hwgpt_bench.surrogates_onnx.intervals import Intervals, interval_metrics
from hwgpt_bench.surrogates_onnx.sessions import add_session_coverage
from hwgpt_bench.surrogates_onnx.training import INTERVAL_COVERS, Recipe

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PARITY_RTOL = 1e-4
POINT = "median of a single measurement (the 0.5 quantile model)"
PHYSICAL_POINT = "median of the measurements (the non-negative cost model fitted on medians)"
RIDGE_POINT = "median of the measurements (the ridge model fitted on medians in the metric's transform)"


class _DropMapieSortNotes(logging.Filter):
    """MAPIE logs 'The predictions are ill-sorted.' on the root logger at every prediction; we count it instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "ill-sorted" not in record.getMessage()


@contextlib.contextmanager
def quiet_mapie() -> Iterator[None]:
    """Drop MAPIE's per-call root-logger notes while the block runs."""
    flt = _DropMapieSortNotes()
    logging.getLogger().addFilter(flt)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(flt)


def dataset_info(root: str | Path) -> dict:
    """Version, schema version and sha256 of the release's MANIFEST.json (the dataset the models come from)."""
    manifest = read_dataset_manifest(root)
    return {"version": manifest.get("version"), "schema_version": manifest.get("schema_version"),
            "manifest_sha256": runtime.file_sha256(Path(root) / DATASET_MANIFEST)}


def model_stem(target: Target) -> str:
    """File name stem ``space__device__metric__workload`` with only ``[A-Za-z0-9._=-]`` characters."""
    text = "__".join([target.space, target.device or "any", target.metric, workload_text(target.workload)])
    return re.sub(r"[^A-Za-z0-9._=-]", "_", text)


def onnx_metadata(target: Target, recipe: Recipe, dataset: dict) -> dict:
    """``metadata_props`` of a model's ONNX file (values JSON-encoded by ``export.build_onnx``)."""
    return {"space": target.space, "device": target.device or "", "metric": target.metric, "unit": target.unit,
            "workload": target.workload, "feature_names": target.feature_names, "levels": list(recipe.levels),
            "inputs": "X float32 (N, n_features) in feature_names order (search_spaces.encode)",
            "outputs": "float64 y_pred (N,) point; y_lower, y_upper (N, n_levels) bounds per level, in `unit`",
            "point": POINT, "interval_covers": INTERVAL_COVERS, "transform": TRANSFORMS[target.metric],
            "dataset_version": dataset.get("version") or "", "dataset_manifest_sha256": dataset.get("manifest_sha256")
            or "", "description": f"HW-GPT-Bench surrogate: {target.metric} ({target.unit}) of {target.space} on "
            f"{target.device or 'any device'}, workload {workload_text(target.workload)}"}


def parity(reference: tuple[np.ndarray, ...], onnx_out: tuple[np.ndarray, ...], values: list[np.ndarray]) -> dict:
    """Largest relative difference of each output and the number of (measurement, level) coverage flips."""
    rel = {name: float(np.max(np.abs(o - r) / np.maximum(np.abs(r), 1e-12), initial=0.0))
           for name, r, o in zip(runtime.OUTPUTS, reference, onnx_out, strict=True)}
    flips = 0
    for i, v in enumerate(values):
        inside_ref = (v[:, None] >= reference[1][i]) & (v[:, None] <= reference[2][i])
        inside_onx = (v[:, None] >= onnx_out[1][i]) & (v[:, None] <= onnx_out[2][i])
        flips += int(np.sum(inside_ref != inside_onx))
    return {"max_rel_diff": rel, "coverage_flips": flips, "n_archs": len(values)}


def check_parity(result: dict, where: str) -> None:
    """``RuntimeError`` when the ONNX graph departs from the MAPIE model (rtol ``PARITY_RTOL`` or any flip)."""
    worst = max(result["max_rel_diff"].values())
    if worst >= PARITY_RTOL or result["coverage_flips"]:
        raise RuntimeError(f"{where}: ONNX/MAPIE parity failed: {result}")


def crossing_share(point: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """Share of architectures whose bounds ``(k, n_levels)`` are not nested across levels or miss the point."""
    ok = (lower[:, 0] <= point) & (point <= upper[:, 0])
    ok &= np.all(np.diff(lower, axis=1) <= 0, axis=1) & np.all(np.diff(upper, axis=1) >= 0, axis=1)
    return float(1.0 - ok.mean()) if len(point) else 0.0


def common_entry(target: Target, split: training.SplitData, path: Path, out: Path, dataset: dict,
                 levels) -> dict:
    """The manifest fields every exported model of ``target`` has, whatever its recipe."""
    return {
        "dataset_version": dataset.get("version"), "dataset_manifest_sha256": dataset.get("manifest_sha256"),
        "space": target.space, "device": target.device, "metric": target.metric, "unit": target.unit,
        "workload": target.workload, "default_workload": False, "file": path.relative_to(out).as_posix(),
        "sha256": runtime.file_sha256(path), "bytes": path.stat().st_size, "feature_names": target.feature_names,
        "levels": list(levels), "interval_covers": INTERVAL_COVERS,
        "n_archs": {k: len(v) for k, v in split.ids.items()},
        "repeats_per_arch": {"min": int(target.n_repeats.min()), "median": float(np.median(target.n_repeats)),
                             "max": int(target.n_repeats.max())},
        "paired_reference_ms": target.paired_reference_ms, "training_session_ids": list(target.session_ids),
        **({"notes": list(target.notes)} if target.notes else {}),
    }


def manifest_entry(target: Target, split: training.SplitData, fitted: training.FittedSurrogate, path: Path,
                   test: dict, parity_result: dict, crossing: float, out: Path, dataset: dict) -> dict:
    """The manifest entry of one exported CQR model."""
    return {
        **common_entry(target, split, path, out, dataset, fitted.levels), "point": POINT,
        "transform": fitted.transform, "variant": fitted.models.variant,
        "variant_scores": fitted.selection_scores,
        "conformal_corrections": {"lower": fitted.corrections_lower.tolist(),
                                  "upper": fitted.corrections_upper.tolist(), "bin_edges": fitted.edges.tolist(),
                                  "shape": "[bin][level]; bin = number of bin_edges below the point",
                                  "space": f"{fitted.transform} of the metric",
                                  "calibration": fitted.calibration, "n_calibration_archs": fitted.n_calibration,
                                  "symmetric": fitted.symmetric_correction},
        "n_train_rows": fitted.n_fit_rows,
        "test": test, "crossing_share_before_rearrangement": crossing, "parity": parity_result,
    }


def export_and_compare(fitted: training.FittedSurrogate, target: Target, split: training.SplitData,
                       reference: tuple[np.ndarray, ...], path: Path, metadata: dict) -> tuple[tuple, dict]:
    """Export ``fitted`` to ``path``, run the graph on the test architectures and compare it with ``reference`` (the
    Python model's point and bounds there): (ONNX outputs, ``parity`` result)."""
    model = export.build_onnx(fitted, len(target.feature_names), metadata, path.stem)
    export.save_onnx(model, path)
    onnx_out = tuple(runtime.open_session(path).run(list(runtime.OUTPUTS), {"X": split.x_test}))
    return onnx_out, parity(reference, onnx_out, split.test_values)


def fit_and_export(target: Target, split: training.SplitData, recipe: Recipe, out: Path,
                   dataset: dict) -> tuple[dict, training.FittedSurrogate]:
    """Fit the CQR surrogate of ``target`` on ``split``, export it into ``out/models`` and check parity: (manifest
    entry, the Python model). ``RuntimeError`` on a parity failure."""
    started = time.perf_counter()
    with quiet_mapie():
        fitted = training.fit_surrogate(split, TRANSFORMS[target.metric], recipe,
                                        training.target_rng(target, recipe.seed, "variant"))
        reference = fitted.predict(split.x_test)
        crossing = crossing_share(*fitted.predict(split.x_test, rearrange=False))
    path = out / "models" / f"{model_stem(target)}.onnx"
    onnx_out, par = export_and_compare(fitted, target, split, reference, path,
                                       onnx_metadata(target, recipe, dataset))
    check_parity(par, path.name)
    pred = Intervals(*(np.asarray(o, np.float64) for o in onnx_out), tuple(recipe.levels))
    test = interval_metrics(pred, split.test_values) if split.test_values else {}
    log.info("%s: %d archs, %.1f s, test coverage %s", path.name, len(target.arch_ids), time.perf_counter() - started,
             {k: round(v, 3) for k, v in test.get("coverage", {}).items()})
    return manifest_entry(target, split, fitted, path, test, par, crossing, out, dataset), fitted


def train_one(target: Target, recipe: Recipe, out: Path, dataset: dict) -> dict | str:
    """Train, export and check one target (the ridge surrogate for ``recipe.ridge_metrics``, else the HGB CQR); its
    manifest entry, or the reason it was skipped."""
    split = training.split_target(target, recipe)
    if target.metric in recipe.ridge_metrics:
        return train_ridge(target, split, recipe, out, dataset)
    reason = training.skip_reason(split, recipe, TRANSFORMS[target.metric])
    if reason:
        return reason
    entry, _ = fit_and_export(target, split, recipe, out, dataset)
    return entry


def mark_defaults(entries: list[dict]) -> None:
    """Per (space, device, metric), flag the workload with the most architectures (ties: forward, smallest batch)."""
    groups: dict[tuple, list[dict]] = {}
    for e in entries:
        groups.setdefault((e["space"], e["device"], e["metric"]), []).append(e)
    for group in groups.values():
        def rank(e: dict) -> tuple:
            wl = e["workload"]
            return (-sum(e["n_archs"].values()), wl.get("phase") != "forward", wl.get("batch_size", 0),
                    workload_text(wl))
        min(group, key=rank)["default_workload"] = True


def remove_stale(out: Path, keep: set[str]) -> None:
    """Delete ``out/models/*.onnx`` files that the new manifest does not list (they would ship otherwise)."""
    for path in sorted((out / "models").glob("*.onnx")):
        if path.relative_to(out).as_posix() not in keep:
            log.info("removing stale %s", path)
            path.unlink()


def strict_json(obj):
    """``obj`` with every NaN / infinite float replaced by None (strict JSON, readable from any language)."""
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def write_manifest(out: Path, manifest: dict) -> Path:
    """Write ``out/manifest.json`` atomically (strict JSON, sorted keys, indented)."""
    path = out / runtime.MANIFEST
    tmp = path.with_name(path.name + ".tmp")
    text = json.dumps(strict_json(manifest), indent=1, sort_keys=True, allow_nan=False)
    tmp.write_text(text + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def train_targets(targets: list[Target], recipe: Recipe, stage: Path, info: dict) -> tuple[list[dict], list[dict]]:
    """Train every target into ``stage/models``; (manifest entries, skipped targets with their reason), in the order
    of ``targets``. Metrics of ``recipe.physical_metrics`` get the physical model, fitted per (device, metric,
    workload) over every space at once (``train_physical``); the others, one target at a time, the ridge surrogate
    (``recipe.ridge_metrics``) or the HGB CQR (``train_one``)."""
    results: dict[str, dict | str] = {}
    for group in physical_groups(targets, recipe).values():
        results.update(train_physical(group, recipe, stage, info))
    for target in targets:
        if model_stem(target) not in results:
            results[model_stem(target)] = train_one(target, recipe, stage, info)
    entries, skipped = [], []
    for target in targets:
        result = results[model_stem(target)]
        if isinstance(result, str):
            log.warning("skipping %s: %s", model_stem(target), result)
            skipped.append({"model": model_stem(target), "reason": result})
        else:
            entries.append(result)
    return entries, skipped


# ---- the physical model ------------------------------------------------------------------------------------------
def physical_groups(targets: list[Target], recipe: Recipe) -> dict[tuple, list[Target]]:
    """Targets of ``recipe.physical_metrics`` grouped by (device, metric, workload): the spaces one fit pools."""
    groups: dict[tuple, list[Target]] = {}
    for t in targets:
        if t.metric in recipe.physical_metrics and t.device is not None:
            groups.setdefault((t.device, t.metric, workload_text(t.workload)), []).append(t)
    return groups


def _conformal_reason(split: training.SplitData, recipe: Recipe, transform: str = "log") -> str | None:
    """Why a cross-conformal model (physical or ridge) cannot be fitted on ``split``, or None: values <= 0 under the
    log transform, or fewer fitting architectures than ``physical.smallest_space(levels, symmetric=True)``."""
    values = [*split.train_values, *split.cal_values, *split.test_values]
    if transform == "log" and any(len(v) and np.min(v) <= 0 for v in values):
        return "values <= 0 cannot be fitted in log space"
    n, needed = len(split.fitting_archs("cross")[2]), physical.smallest_space(recipe.levels, symmetric=True)
    return f"{n} fitting architectures (< {needed})" if n < needed else None


def train_physical(targets: list[Target], recipe: Recipe, out: Path, dataset: dict) -> dict[str, dict | str]:
    """Fit one physical model on the fitting architectures (training + calibration) of every space in ``targets``
    (one device, metric and workload), export one graph per space and check it on the test architectures.
    Returns ``{model_stem: manifest entry or skip reason}``."""
    started = time.perf_counter()
    splits = {model_stem(t): training.split_target(t, recipe) for t in targets}
    results: dict[str, dict | str] = {}
    usable = []
    for t in targets:
        reason = _conformal_reason(splits[model_stem(t)], recipe)
        if reason:
            results[model_stem(t)] = reason
        else:
            usable.append(t)
    if not usable:
        return results
    spaces = []
    for t in usable:
        x, values, ids, _ = splits[model_stem(t)].fitting_archs("cross")
        spaces.append(physical.SpaceData(t.space, ids, x, values))
    models = physical.fit_pooled(spaces, usable[0].workload, recipe.levels, recipe.folds, recipe.min_bin_archs,
                                 recipe.mondrian_bins, recipe.seed, physical.KINDS[usable[0].metric])
    for t in usable:
        results[model_stem(t)] = export_physical(t, splits[model_stem(t)], models[t.space], recipe, out, dataset)
    log.info("physical %s on %s: %d spaces, %.1f s", usable[0].metric, usable[0].device, len(usable),
             time.perf_counter() - started)
    return results


def export_physical(target: Target, split: training.SplitData, model: physical.PhysicalModel, recipe: Recipe,
                    out: Path, dataset: dict) -> dict:
    """Write ``model``'s graph, check parity with ``model.predict`` on the test architectures (``RuntimeError`` on a
    failure) and return its manifest entry."""
    path = out / "models" / f"{model_stem(target)}.onnx"
    meta = {**onnx_metadata(target, recipe, dataset), "point": PHYSICAL_POINT}
    par, test = save_and_check(physical.export_onnx(model, meta), path, model.predict(split.x_test), split,
                               recipe.levels)
    return {**common_entry(target, split, path, out, dataset, recipe.levels), "point": PHYSICAL_POINT,
            "transform": "log", "variant": "physical", "physical": model.to_dict(), "n_train_rows": model.n_archs,
            "test": test, "crossing_share_before_rearrangement": 0.0, "parity": par}


def save_and_check(graph, path: Path, reference: tuple[np.ndarray, ...], split: training.SplitData,
                   levels) -> tuple[dict, dict]:
    """Write ``graph`` to ``path``, run it on the test architectures and check its parity with ``reference`` (the
    Python model's point and bounds there; ``RuntimeError`` on a failure): (parity result, test interval metrics)."""
    export.save_onnx(graph, path)
    onnx_out = tuple(runtime.open_session(path).run(list(runtime.OUTPUTS), {"X": split.x_test}))
    par = parity(reference, onnx_out, split.test_values)
    check_parity(par, path.name)
    pred = Intervals(*(np.asarray(o, np.float64) for o in onnx_out), tuple(levels))
    return par, interval_metrics(pred, split.test_values) if split.test_values else {}


# ---- the ridge model ---------------------------------------------------------------------------------------------
def train_ridge(target: Target, split: training.SplitData, recipe: Recipe, out: Path, dataset: dict) -> dict | str:
    """Fit the ridge surrogate of ``target`` on its fitting architectures (training + calibration), export it, check
    parity with ``RidgeModel.predict`` on the test architectures (``RuntimeError`` on a failure); its manifest entry,
    or the reason it was skipped."""
    started = time.perf_counter()
    transform = TRANSFORMS[target.metric]
    reason = _conformal_reason(split, recipe, transform)
    if reason:
        return reason
    x, values, ids, _ = split.fitting_archs("cross")
    model = ridge.fit_model(target.space, x, values, ids, transform, recipe.levels, recipe.folds,
                            recipe.ridge_min_bin_archs, recipe.mondrian_bins, recipe.seed)
    path = out / "models" / f"{model_stem(target)}.onnx"
    meta = {**onnx_metadata(target, recipe, dataset), "point": RIDGE_POINT}
    par, test = save_and_check(ridge.export_onnx(model, meta), path, model.predict(split.x_test), split, recipe.levels)
    log.info("%s: ridge %s, %d archs, %.1f s, test coverage %s", path.name, model.basis, len(target.arch_ids),
             time.perf_counter() - started, {k: round(v, 3) for k, v in test.get("coverage", {}).items()})
    return {**common_entry(target, split, path, out, dataset, recipe.levels), "point": RIDGE_POINT,
            "transform": transform, "variant": "ridge", "ridge": model.to_dict(), "n_train_rows": model.n_archs,
            "test": test, "crossing_share_before_rearrangement": 0.0, "parity": par}


# ---- free-workload physical models ------------------------------------------------------------------------------
FREE_INPUTS = {"X": "float32 (N, n_features) in feature_names order (search_spaces.encode)",
               "W": "float64 (1, 2): batch_size, seq_len of the workload asked for"}


def free_groups(targets: list[Target], recipe: Recipe) -> dict[tuple, list[Target]]:
    """Targets of ``recipe.physical_metrics`` grouped by (device, metric, phase, dtype), where some space is
    measured in at least two workloads: the cells of one free-workload fit."""
    groups: dict[tuple, list[Target]] = {}
    for t in targets:
        if t.metric in recipe.physical_metrics and t.device is not None:
            groups.setdefault((t.device, t.metric, t.workload["phase"], t.workload["dtype"]), []).append(t)
    return {k: g for k, g in groups.items() if max(sum(t.space == u.space for u in g) for t in g) >= 2}


def _cells(targets: list[Target], splits: dict[str, training.SplitData]) -> list[tuple]:
    cells = []
    for t in targets:
        x, values, ids, _ = splits[model_stem(t)].fitting_archs("cross")
        cells.append((physical.SpaceData(t.space, ids, x, values), t.workload))
    return cells


def held_out_workloads(targets: list[Target], splits: dict[str, training.SplitData], space: str,
                       recipe: Recipe) -> list[dict]:
    """For each workload of ``space`` in ``targets``: the free model fitted without ANY cell of that workload (no
    space's), judged on the space's test architectures there (interval metrics). ``interior``: whether the
    workload lies in the convex hull of the remaining ones (``inside_hull``: interpolation); otherwise the model
    extrapolates to it. Workloads outside the remaining space's measured ranges are skipped."""
    out = []
    for target in (t for t in targets if t.space == space):
        wl = target.workload
        others = [t for t in targets if t.workload != wl]
        try:
            model = physical.fit_free(_cells(others, splits), recipe.levels, recipe.folds, recipe.min_bin_archs,
                                      recipe.mondrian_bins, recipe.seed, physical.KINDS[target.metric]).get(space)
        except ValueError as err:
            log.info("held-out %s %s: %s", space, workload_text(wl), err)
            continue
        split = splits[model_stem(target)]
        if model is None or not split.test_values:
            continue
        pred = model.predict(split.x_test, wl["batch_size"], wl["seq_len"]) if _inside(model, wl) else None
        if pred is not None:
            interior = inside_hull((wl["batch_size"], wl["seq_len"]),
                                   [(t.workload["batch_size"], t.workload["seq_len"]) for t in others])
            out.append({"workload": wl, "interior": interior,
                        **interval_metrics(Intervals(*pred, tuple(recipe.levels)), split.test_values)})
    return out


def inside_hull(point: tuple[float, float], others: list[tuple[float, float]]) -> bool:
    """Whether ``point`` (batch size, sequence length) lies in the convex hull of ``others``: interpolation
    between measured workloads, not extrapolation beyond them. Points on one line (one batch size, say) form a
    segment."""
    from scipy.spatial import Delaunay, QhullError

    pts, p = np.unique(np.asarray(others, dtype=float), axis=0), np.asarray(point, dtype=float)
    try:
        return bool(Delaunay(pts).find_simplex(p) >= 0)
    except (QhullError, ValueError):  # fewer than 3 points, or all on one line
        if len(pts) == 1:
            return bool(np.all(pts[0] == p))
        direction = pts[-1] - pts[0]
        offset = p - pts[0]
        along = float(offset @ direction / (direction @ direction))
        on_line = np.allclose(offset, along * direction)
        spans = (pts - pts[0]) @ direction / (direction @ direction)
        return bool(on_line and spans.min() - 1e-9 <= along <= spans.max() + 1e-9)


def _inside(model: physical.PhysicalModel, wl: dict) -> bool:
    return all(low <= wl[k] <= high for k, (low, high) in model.ranges.items())


def train_free(targets: list[Target], recipe: Recipe, out: Path, dataset: dict) -> list[dict]:
    """Free-workload models of one (device, metric, phase, dtype) group: fitted on every cell's fitting
    architectures, exported (graph inputs ``X`` and ``W``), checked against ``predict`` at every measured workload
    and judged on held-out workloads. Returns their ``workload_models`` entries."""
    splits = {model_stem(t): training.split_target(t, recipe) for t in targets}
    usable = [t for t in targets if _conformal_reason(splits[model_stem(t)], recipe) is None]
    if max((sum(t.space == u.space for u in usable) for t in usable), default=0) < 2:
        return []
    models = physical.fit_free(_cells(usable, splits), recipe.levels, recipe.folds, recipe.min_bin_archs,
                               recipe.mondrian_bins, recipe.seed, physical.KINDS[targets[0].metric])
    entries = []
    for space, model in models.items():
        entries.append(export_free(space, model, usable, splits, recipe, out, dataset))
    return entries


def export_free(space: str, model: physical.PhysicalModel, targets: list[Target],
                splits: dict[str, training.SplitData], recipe: Recipe, out: Path, dataset: dict) -> dict:
    """Write one free model's graph, check its parity at each measured workload, return its manifest entry."""
    first = next(t for t in targets if t.space == space)
    wl = model.workload
    stem = re.sub(r"[^A-Za-z0-9._=-]", "_", f"{space}__{first.device}__{first.metric}__{wl['phase']}-any-"
                                           f"{wl['dtype']}")
    path = out / "models" / f"{stem}.onnx"
    meta = {**onnx_metadata(first, recipe, dataset), "workload": wl, "inputs": FREE_INPUTS, "point": PHYSICAL_POINT}
    export.save_onnx(physical.export_onnx(model, meta), path)
    session = runtime.open_session(path)
    worst = 0.0
    for t in (t for t in targets if t.space == space):
        x = splits[model_stem(t)].x_test
        w = np.array([[t.workload["batch_size"], t.workload["seq_len"]]], dtype=np.float64)
        got = session.run(list(runtime.OUTPUTS), {"X": x, "W": w})
        ref = model.predict(x, t.workload["batch_size"], t.workload["seq_len"])
        worst = max(worst, *(float(np.max(np.abs(g - r) / r, initial=0.0)) for g, r in zip(got, ref, strict=True)))
    if worst >= PARITY_RTOL:
        raise RuntimeError(f"{path.name}: ONNX/numpy parity failed: relative difference {worst}")
    return {"dataset_version": dataset.get("version"), "dataset_manifest_sha256": dataset.get("manifest_sha256"),
            "space": space, "device": first.device, "metric": first.metric, "unit": first.unit, "workload": wl,
            "inputs": FREE_INPUTS, "ranges": model.ranges,
            "measured_workloads": sorted((t.workload for t in targets if t.space == space), key=workload_text),
            "file": path.relative_to(out).as_posix(), "sha256": runtime.file_sha256(path),
            "bytes": path.stat().st_size, "feature_names": first.feature_names, "levels": list(recipe.levels),
            "point": PHYSICAL_POINT, "interval_covers": INTERVAL_COVERS + FREE_COVERS, "transform": "log",
            "variant": "physical", "physical": model.to_dict(), "parity": {"max_rel_diff": worst},
            "held_out_workloads": held_out_workloads(targets, splits, space, recipe)}


FREE_COVERS = ("; at a workload between the measured ones (batch size and sequence length inside `ranges`), with the "
               "coverage that `held_out_workloads` measures on workloads left out of the fit")


def publish_models(stage: Path, out: Path, entries: list[dict]) -> None:  # entries of both manifest lists
    """Move the staged model files into ``out/models`` and delete the ones the new manifest does not list."""
    (out / "models").mkdir(parents=True, exist_ok=True)
    for entry in entries:
        os.replace(stage / entry["file"], out / entry["file"])
    remove_stale(out, {e["file"] for e in entries})


def train_surrogates(dataset: str | Path, out: str | Path, recipe: Recipe | None = None, **filters) -> dict:
    """Train every target of the release ``dataset`` into ``out``; returns the manifest written there.

    ``filters`` go to ``data.load_targets`` (``metrics``, ``spaces``, ``devices``, ``phases``, ``batch_sizes``,
    ``seq_lens``, ``dtypes``; None = all). Models are trained into a staging folder inside ``out`` and moved into
    ``out/models`` only when every target succeeded, so a failure leaves the previous models and manifest intact.
    """
    from hwgpt_bench import __version__

    out, recipe = Path(out), recipe or Recipe()
    out.mkdir(parents=True, exist_ok=True)
    info = dataset_info(dataset)
    targets = data.load_targets(dataset, **{k: v for k, v in filters.items() if v is not None})
    stage = out / f".staging-{uuid.uuid4().hex[:8]}"
    try:
        entries, skipped = train_targets(targets, recipe, stage, info)
        mark_defaults(entries)
        free = [e for group in free_groups(targets, recipe).values() for e in train_free(group, recipe, stage, info)]
        publish_models(stage, out, entries + free)
        add_session_coverage(entries, dataset, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    manifest = {"format_version": FORMAT_VERSION, "created_at": created,
                "package_version": __version__, "dataset": info, "recipe": recipe.to_dict(),
                "interval_covers": INTERVAL_COVERS, "models": entries, "workload_models": free, "skipped": skipped}
    write_manifest(out, manifest)
    log.info("%d models written to %s (%d skipped)", len(entries), out, len(skipped))
    return manifest

