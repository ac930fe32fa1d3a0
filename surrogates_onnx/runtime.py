"""Light runtime of the ONNX surrogates: numpy + onnxruntime (+ the pure-Python search spaces) and nothing else.

Each model is one ``.onnx`` graph with input ``X`` (float32, shape ``(N, n_features)``, the encoding of
``search_spaces.encode``) and three float64 outputs in the metric's units: ``y_pred`` ``(N,)`` (the point: the predicted
median of a single measurement), ``y_lower`` and ``y_upper`` ``(N, n_levels)`` (conformal interval bounds, one
column per confidence level). ``manifest.json`` next to ``models/`` lists every model with its space, device, metric,
unit, workload, feature order, levels, what the interval covers, test coverage and the file's sha256, which is
checked when a model is loaded.

Example::

    from hwgpt_bench.surrogates_onnx.runtime import Surrogate, list_models
    s = Surrogate.load("gpt-s", "cpu-amd-epyc-2t", "latency_ms")
    res = s.predict([{"space": "gpt-s", "embed_dim": 384, "n_layer": 10, ...}])
    res.point, res.interval(0.9)  # (N,) and two (N,) arrays, in res.unit
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from hwgpt_bench.files import file_sha256
from hwgpt_bench.metrics import METRIC_NAMES, METRICS, workload_text
from hwgpt_bench.search_spaces import SPACES, ArchConfig, encode, feature_names

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DEFAULT_ROOT = Path(__file__).resolve().parent
OUTPUTS = ("y_pred", "y_lower", "y_upper")


def _root(root: str | Path | None) -> Path:
    return DEFAULT_ROOT if root is None else Path(root)


def read_manifest(root: str | Path | None = None) -> dict:
    """``<root>/manifest.json`` as a dict (default root: the installed package); ``ValueError`` when absent."""
    path = _root(root) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{path}: no surrogate manifest; train models with `hwgpt-bench train-surrogates --out "
                         f"{_root(root)}` or pass root= a folder that has one")
    return json.loads(path.read_text(encoding="utf-8"))


def list_models(root: str | Path | None = None) -> list[dict]:
    """Every model of ``root`` (default: the shipped ones) as small dicts; [] when no manifest exists there.

    Keys: ``space``, ``device`` (None for device-free metrics), ``metric``, ``unit``, ``workload`` (dict),
    ``default_workload`` (bool), ``levels``, ``file``.
    """
    if not (_root(root) / MANIFEST).is_file():
        return []
    keys = ("space", "device", "metric", "unit", "workload", "default_workload", "levels", "file")
    return [{k: m.get(k) for k in keys} for m in read_manifest(root)["models"]]


def _matches(entry: dict, space: str, device: str | None, metric: str, workload: Mapping | None) -> bool:
    if (entry["space"], entry["metric"]) != (space, metric):
        return False
    if entry["device"] is not None and entry["device"] != device:
        return False
    wl = entry["workload"]
    return all(str(wl.get(k)) == str(v) for k, v in (workload or {}).items())


def _path(entry: dict) -> str:
    return f"{entry['space']}/{entry['device']}/{entry['metric']}/{workload_text(entry['workload'])}"


def _allowed(values: Iterable) -> str:
    return ", ".join(dict.fromkeys(str(v) for v in values)) or "(none)"


def find_entry(manifest: dict, space: str, device: str | None, metric: str, workload: Mapping | None = None) -> dict:
    """The manifest entry of one model; several matches resolve to the ``default_workload`` one when ``workload``
    is None. Device-free metrics (perplexity, accuracy) match any ``device``.

    A miss is a ``ValueError`` naming the one argument at fault and its allowed values, narrowed step by step: an
    unknown space (allowed: the search spaces), an unknown metric (the registry's metric names), a space or metric
    without a model here, an unknown device (the devices with a model of that space and metric), an unknown workload
    (the workloads of the models of that space, device and metric).
    """
    if not isinstance(space, str) or space not in SPACES:
        raise ValueError(f"unknown space {space!r}; allowed: {_allowed(SPACES)}")
    if not isinstance(metric, str) or metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; allowed: {_allowed(METRIC_NAMES)}")
    models = manifest["models"]
    of_space = [m for m in models if m["space"] == space]
    if not of_space:
        raise ValueError(f"no model for space {space!r} here; allowed: {_allowed(sorted({m['space'] for m in models}))}"
                         " (no model matches; only these spaces are available)")
    same = [m for m in of_space if m["metric"] == metric]
    if not same:
        have = _allowed(n for n in METRIC_NAMES if any(m["metric"] == n for m in of_space))
        raise ValueError(f"no model for metric {metric!r} of space {space}; allowed: {have} (no model matches; only "
                         f"these metrics are available for {space})")
    on_device = [m for m in same if m["device"] is None or m["device"] == device]
    if not on_device:
        devices = _allowed(sorted({m["device"] for m in same}))
        what = "no device given" if device is None else f"unknown device {device!r}"
        raise ValueError(f"{what} for space {space} metric {metric}; allowed: {devices} (no model matches; only these "
                         f"devices are available for {space} {metric})")
    per_device = any(m["device"] is not None for m in on_device)
    where = f"space {space} device {device} metric {metric}" if per_device else f"space {space} metric {metric}"
    keys = sorted({k for m in on_device for k in m["workload"]})
    unknown = sorted(str(k) for k in (workload or {}) if k not in keys)
    if unknown:
        raise ValueError(f"unknown workload key(s) {unknown} for {where}; allowed: {_allowed(keys)}")
    found = [m for m in on_device if _matches(m, space, device, metric, workload)]
    if len(found) > 1 and workload is None:
        found = [m for m in found if m.get("default_workload")] or found
    if len(found) == 1:
        return found[0]
    scope = f"{space} {metric}" + (f" on {device}" if per_device else "")
    if not found:
        raise ValueError(f"unknown workload {dict(workload or {})} for {where} (no model matches; available for "
                         f"{scope}); allowed: {_allowed(sorted(_path(m) for m in on_device))}")
    raise ValueError(f"several models match workload {dict(workload or {})} for {where}; narrow it with workload= "
                     f"(--phase, --batch-size, --seq-len, --dtype); available for {scope}, allowed: "
                     f"{_allowed(sorted(_path(m) for m in found))}")


def _int_in(wl: Mapping, key: str, low: int, high: int, where: str) -> int:
    value = wl.get(key)
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise ValueError(f"{key}: {value!r} is not allowed for {where}; allowed values: integers {low} to {high}")
    if not low <= value <= high:
        raise ValueError(f"{key}: {value} is outside the measured range of {where}; allowed values: {low} to {high}")
    return int(value)


def find_workload_model(manifest: dict, space: str, device: str | None, metric: str,
                        workload: Mapping | None) -> tuple[dict, np.ndarray] | None:
    """The free-workload model (``manifest["workload_models"]``) of (space, device, metric) and the workload's
    phase (and dtype, if given), with its ``W`` input ``(1, 2)`` float64; None when there is none or ``workload``
    lacks ``phase``, ``batch_size`` or ``seq_len``. A batch size or sequence length outside the model's measured
    ``ranges`` is a ``ValueError`` naming the field and the range."""
    wl = dict(workload or {})
    if not {"phase", "batch_size", "seq_len"} <= set(wl):
        return None
    for entry in manifest.get("workload_models", []):
        own = entry["workload"]
        if (entry["space"], entry["device"], entry["metric"]) != (space, device, metric):
            continue
        if all(str(own[k]) == str(wl[k]) for k in own if k in wl):
            where = f"{space} {metric} on {device}, phase {own['phase']}"
            b, t = (_int_in(wl, k, *entry["ranges"][k], where) for k in ("batch_size", "seq_len"))
            return {**entry, "workload": {**own, "batch_size": b, "seq_len": t}, "interpolated": True}, \
                np.array([[b, t]], dtype=np.float64)
    return None


def check_file(path: Path, expected_sha256: str) -> None:
    """``ValueError`` when ``path`` is missing or its sha256 is not the manifest's."""
    if not path.is_file():
        raise ValueError(f"{path}: model file missing (listed in the manifest)")
    actual = file_sha256(path)
    if actual != expected_sha256:
        raise ValueError(f"{path}: sha256 mismatch (manifest {expected_sha256}, file {actual}); the file was changed "
                         "or corrupted: reinstall the package or retrain with `hwgpt-bench train-surrogates`")


def session_options(threads: int = 1) -> ort.SessionOptions:
    """Explicit onnxruntime options: ``threads`` intra-op threads (default 1), one inter-op thread, all graph
    optimisations, sequential execution."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return opts


def open_session(path: str | Path, threads: int = 1) -> ort.InferenceSession:
    """An onnxruntime session on the CPU execution provider with ``session_options(threads)``."""
    return ort.InferenceSession(str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"])


def to_arch(arch: ArchConfig | Mapping, space: str) -> ArchConfig:
    """Validate one architecture of ``space``: an ``ArchConfig`` or a plain dict (``space`` may be left out).

    Strict (``ArchConfig.from_dict``): unknown fields, a non-bool ``bias`` and non-integer sizes are errors, and an
    architecture of another space is reported as such. An out-of-space value is a ``ValueError`` naming the field and
    its allowed values.
    """
    if isinstance(arch, Mapping):
        if "space" in arch and arch["space"] != space:  # before the fields, which are checked against its space
            raise ValueError(f"space: architecture says {arch['space']!r} but the model is for {space!r}")
        arch = ArchConfig.from_dict({"space": space, **arch})
    if not isinstance(arch, ArchConfig):
        raise ValueError(f"architecture: expected an ArchConfig or a dict, got {type(arch).__name__}")
    if arch.space != space:
        raise ValueError(f"space: architecture says {arch.space!r} but the model is for {space!r}")
    return arch


def encode_archs(archs: Iterable[ArchConfig | Mapping] | ArchConfig | Mapping, space: str) -> np.ndarray:
    """Validated encoding of ``archs`` (one or many), float32 of shape ``(N, len(feature_names(space)))``."""
    if isinstance(archs, (ArchConfig, Mapping)):
        archs = [archs]
    rows = [encode(to_arch(a, space)) for a in archs]
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), len(feature_names(space)))


@dataclass(frozen=True)
class Prediction:
    """Predictions for N architectures, in ``unit``.

    Attributes:
        point: ``(N,)`` predicted median of a single measurement.
        lower: ``(N, n_levels)`` lower bounds, column j for ``levels[j]``.
        upper: ``(N, n_levels)`` upper bounds.
        levels: confidence levels of the columns, ascending (e.g. ``(0.5, 0.8, 0.9, 0.95)``).
        unit: unit of every array (``ms``, ``mJ``, ``MiB``, ``1`` for perplexity, ``fraction`` for accuracy).
        metric: the dataset column predicted.
    """

    point: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    levels: tuple[float, ...]
    unit: str
    metric: str

    def level_index(self, level: float) -> int:
        """Column of ``level``; ``ValueError`` lists the model's levels."""
        for j, have in enumerate(self.levels):
            if abs(have - float(level)) < 1e-9:
                return j
        raise ValueError(f"level: {level} is not a level of this model; allowed values: {list(self.levels)}")

    def interval(self, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """``(lower, upper)`` at ``level``, each of shape ``(N,)``."""
        j = self.level_index(level)
        return self.lower[:, j], self.upper[:, j]

    def to_records(self, level: float | None = None) -> list[dict]:
        """One JSON-ready dict per architecture: point and bounds at ``level`` (or at every level when None)."""
        levels = self.levels if level is None else (self.levels[self.level_index(level)],)
        cols = [self.level_index(lv) for lv in levels]
        return [{"metric": self.metric, "unit": self.unit, "point": float(self.point[i]),
                 "intervals": {f"{self.levels[j]:g}": [float(self.lower[i, j]), float(self.upper[i, j])]
                               for j in cols}} for i in range(len(self.point))]


class Surrogate:
    """One ONNX surrogate (space, device, metric, workload) with its manifest entry; load with ``Surrogate.load``."""

    def __init__(self, entry: dict, session: ort.InferenceSession, dataset: dict | None = None,
                 workload_input: np.ndarray | None = None) -> None:
        self.entry = entry
        self.session = session
        self.workload_input = workload_input  # ``W`` of a free-workload model (batch size, sequence length)
        self.dataset = dataset or {}
        self.space: str = entry["space"]
        self.device: str | None = entry["device"]
        self.metric: str = entry["metric"]
        self.unit: str = entry["unit"]
        self.workload: dict = dict(entry["workload"])
        self.levels: tuple[float, ...] = tuple(float(v) for v in entry["levels"])
        self.feature_names: list[str] = list(entry["feature_names"])
        # a paired device's latency model: the median reference step (ms) its ratios were multiplied by
        self.paired_reference_ms: float | None = entry.get("paired_reference_ms")
        self._check_encoding()

    def _check_encoding(self) -> None:
        expected = feature_names(self.space)
        if self.feature_names != expected:
            raise ValueError(f"{self.entry['file']}: feature names {self.feature_names} differ from the encoding of "
                             f"space {self.space!r} in this version ({expected}); retrain the surrogate")

    @classmethod
    def load(cls, space: str, device: str | None, metric: str, workload: Mapping | None = None,
             root: str | Path | None = None, threads: int = 1) -> Surrogate:
        """Load the model of (``space``, ``device``, ``metric``, ``workload``) from ``root`` (default: shipped).

        ``workload`` is a dict of any of ``phase``, ``batch_size``, ``seq_len``, ``dtype`` that narrows the choice;
        None picks the manifest's default workload. A workload between the measured ones (``phase``, ``batch_size``
        and ``seq_len`` given, no model of exactly that workload) is answered by the free-workload model of that
        phase where one exists (``find_workload_model``; its entry has ``interpolated: true`` and the coverage on
        held-out workloads, ``held_out_workloads``). The file's sha256 must match the manifest (else ``ValueError``).
        ``threads``: onnxruntime intra-op threads (default 1).
        """
        manifest = read_manifest(root)
        w = None
        try:
            entry = find_entry(manifest, space, device, metric, workload)
        except ValueError:
            found = find_workload_model(manifest, space, device, metric, workload)
            if found is None:
                raise
            entry, w = found
        path = _root(root) / entry["file"]
        check_file(path, entry["sha256"])
        log.debug("loading %s", path)
        return cls(entry, open_session(path, threads), manifest.get("dataset"), w)

    def predict_features(self, features: np.ndarray) -> Prediction:
        """Predict from already encoded rows: ``features`` of shape ``(N, n_features)`` in ``feature_names`` order."""
        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise ValueError(f"features: expected shape (N, {len(self.feature_names)}), got {x.shape}")
        feeds = {"X": x} if self.workload_input is None else {"X": x, "W": self.workload_input}
        point, lower, upper = self.session.run(list(OUTPUTS), feeds)
        return Prediction(point.astype(np.float64), lower.astype(np.float64), upper.astype(np.float64), self.levels,
                          self.unit, self.metric)

    def predict(self, archs: Iterable[ArchConfig | Mapping] | ArchConfig | Mapping) -> Prediction:
        """Point and interval bounds for one or many architectures (``ArchConfig`` or plain dicts, validated)."""
        return self.predict_features(encode_archs(archs, self.space))

    def predict_columns(self, columns) -> Prediction:
        """Point and bounds for N architectures given as columns, encoded without a loop per architecture.

        ``columns``: a dict of arrays or a polars / pandas DataFrame with ``embed_dim``, ``n_layer``, ``bias``
        ``(N,)`` and ``n_head``, ``mlp_ratio`` as ``(N, max_layers)`` zero-padded arrays, per-row sequences or list
        columns (``encoding.encode_columns``; validated, errors name the column and row).
        """
        from hwgpt_bench.surrogates_onnx.encoding import encode_columns

        return self.predict_features(encode_columns(self.space, columns))

    def paired_values(self, latency_ms: Iterable[float], reference_ms: Iterable[float]) -> np.ndarray:
        """A paired model's unit from paired measurements: ``latency_ms[i] / reference_ms[i] * paired_reference_ms``.

        ``latency_ms``: ``(n,)`` steps of one architecture; ``reference_ms``: ``(n,)`` the paired reference's step
        measured right after each (``hwgpt-bench profile --paired-reference``; the ``reference_ms`` column). Returns
        ``(n,)`` milliseconds at the device's typical speed, what this model predicts. ``ValueError`` when the model is
        not a paired one, or the two do not pair up.
        """
        if self.paired_reference_ms is None:
            raise ValueError(f"reference_ms: {self.entry['file']} was trained on bare latency (no paired reference); "
                             "give its measurements as they are")
        lat, ref = np.asarray(list(latency_ms), dtype=float), np.asarray(list(reference_ms), dtype=float)
        if lat.shape != ref.shape:
            raise ValueError(f"reference_ms: one reference step per latency step, got {ref.size} for {lat.size}")
        if not (np.all(np.isfinite(ref)) and np.all(ref > 0)):
            raise ValueError(f"reference_ms: every reference step must be a positive number of ms, got {ref.tolist()}")
        return lat / ref * self.paired_reference_ms

    def recalibrate(self, archs: Iterable[ArchConfig | Mapping], repeats: Iterable[Iterable[float]],
                    device: str | None = None, reference: Iterable[Iterable[float]] | None = None,
                    widths: str = "conformal") -> RecalibratedSurrogate:
        """This model corrected for another session or host of its device kind from a few measured architectures.

        ``archs``: n >= 5 architectures measured there (the space's calibration panel, ``hwgpt_bench.panel``, is
        the intended set: it spans the FLOPs range); ``repeats``: n sequences of their single measurements, in
        ``unit``. A paired model (``paired_reference_ms`` set) needs ``reference``: n sequences of the paired
        reference's steps beside those repeats (measured with ``--paired-reference``), and is recalibrated on
        ``paired_values``; an unpaired one refuses ``reference``. The point is rescaled and each level's interval
        widened or narrowed by split conformal on those architectures (``recalibration.fit_recalibration``), or with
        ``widths="model"`` kept as the model's (the point rescaled only: another session of the same device, whose
        spread the model knows). ``device`` names the new host in the result (default: this model's device).
        Returns a model with the same ``predict`` API whose ``recalibration`` says what was fitted.
        """
        from hwgpt_bench.surrogates_onnx.recalibration import fit_recalibration

        archs, repeats = list(archs), [list(r) for r in repeats]
        if self.paired_reference_ms is not None:
            if reference is None:
                raise ValueError(f"reference: {self.entry['file']} predicts paired latency; give the paired "
                                 "reference's steps beside each architecture's repeats (the reference_ms column)")
            reference = list(reference)
            if len(reference) != len(repeats):
                raise ValueError(f"reference: one sequence per architecture, got {len(reference)} for "
                                 f"{len(repeats)}")
            repeats = [self.paired_values(r, ref) for r, ref in zip(repeats, reference, strict=True)]
        elif reference is not None:
            raise ValueError(f"reference: {self.entry['file']} was trained on bare latency; recalibrate it with "
                             "bare repeats only")
        pred = self.predict(archs)
        fit = fit_recalibration(pred.point, pred.lower, pred.upper, [np.asarray(r, dtype=float) for r in repeats],
                                self.levels, widths)
        return RecalibratedSurrogate(self, fit, device)

    def __repr__(self) -> str:
        return (f"Surrogate(space={self.space!r}, device={self.device!r}, metric={self.metric!r}, "
                f"workload={workload_text(self.workload)!r}, levels={self.levels}, unit={self.unit!r})")


class RecalibratedSurrogate(Surrogate):
    """A ``Surrogate`` whose predictions pass through a fitted ``Recalibration`` (``Surrogate.recalibrate``).

    ``entry`` is the base model's manifest entry with ``device`` set to the new host's (when given) and
    ``recalibration`` (the fitted figures) and ``recalibrated_from`` (the base model's device) added.
    """

    def __init__(self, base: Surrogate, recalibration, device: str | None = None) -> None:
        entry = {**base.entry, "device": base.device if device is None else device,
                 "recalibration": recalibration.to_dict(), "recalibrated_from": base.device}
        super().__init__(entry, base.session, base.dataset)
        self.base = base
        self.recalibration = recalibration

    def predict_features(self, features: np.ndarray) -> Prediction:
        raw = self.base.predict_features(features)
        point, lower, upper = self.recalibration.apply(raw.point, raw.lower, raw.upper)
        return Prediction(point, lower, upper, raw.levels, raw.unit, raw.metric)

    def __repr__(self) -> str:
        return f"Recalibrated{super().__repr__()} (from {self.base.device!r}, scale {self.recalibration.scale:.3f})"
