"""Which few architectures to measure on a new device: ``hwgpt-bench plan-device``.

A new device gets a calibrated surrogate from K measured architectures (``K >= MIN_K``). The plan written here is a
``run-plan`` plan of one session on that device, so the space's calibration panel (``hwgpt_bench.panel``, 16
architectures spread over the FLOPs range) is measured at its start and end anyway; on top of it come:

1. **K fitting architectures**, chosen from the release's own seeded sample (seed 0: the architectures every shipped
   device measured, so the shipped surrogates and tables describe them too) by greedy farthest-point selection in the
   features that drive cost: log FLOPs per token, log parameters, layer count, mean attention width and mean MLP width
   per layer, each standardised over the pool. The smallest and largest architectures (sample positions 0 and 1) come
   first and the panel's members count as already chosen, so the K add what the panel lacks. Deterministic: the same
   space, K and pool always give the same positions (ties go to the lower position).
2. optionally **H held-out architectures** (``--holdout``): positions 2 .. H + 1 of another seeded sample
   (``HOLDOUT_SEED``; positions 0 and 1 of every sample are the space's extremes, already among the fitting ones),
   for judging the fitted model on architectures it never saw (``hwgpt-bench fit-device`` leaves them out).

The plan's entries name the positions (``pick``) of the seeded sample, so ``architectures`` rows keep their sample
seed and index.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from hwgpt_bench.files import write_text_atomic
from hwgpt_bench.panel import calibration_panel
from hwgpt_bench.search_spaces import ArchConfig, get_space, sample_archs

log = logging.getLogger(__name__)

MIN_K = 10  # below this no interval method on the K architectures alone is worth shipping
POOL_SIZE = 2000  # the release sample's first positions the K are chosen from (the gpt-nano release size)
RELEASE_SEED = 0
HOLDOUT_SEED = 1  # never the release's seed 0 nor the panel's


def cost_features(archs: list[ArchConfig]) -> np.ndarray:
    """``(N, 5)``: log FLOPs per token, log parameters, layer count, mean attention width, mean MLP width (raw)."""
    rows = []
    for a in archs:
        n = a.n_layer
        rows.append([math.log(a.forward_flops(1) / a.search_space.block_size), math.log(a.num_params()), n,
                     sum(a.attn_width(i) for i in range(n)) / n, sum(a.mlp_width(i) for i in range(n)) / n])
    return np.asarray(rows, dtype=float)


def _standardise(features: np.ndarray, reference: np.ndarray) -> np.ndarray:
    scale = reference.std(axis=0)
    return (features - reference.mean(axis=0)) / np.where(scale > 0, scale, 1.0)


def fitting_positions(space: str, k: int, pool_size: int = POOL_SIZE) -> list[int]:
    """The ``k`` positions of the seed-0 sample to measure (see the module docstring), in the order chosen."""
    sp = get_space(space)
    pool_size = min(pool_size, sp.size())
    if isinstance(k, bool) or not isinstance(k, int) or not MIN_K <= k <= pool_size:
        raise ValueError(f"k: must be an integer in {MIN_K}..{pool_size} (architectures to fit a device model on; "
                         f"fewer than {MIN_K} cannot support an interval), got {k!r}")
    pool = sample_archs(sp, pool_size, seed=RELEASE_SEED, include_extremes=True)
    raw = cost_features(pool)
    features = _standardise(raw, raw)
    panel = _standardise(cost_features(calibration_panel(sp)), raw)
    nearest = np.min(np.linalg.norm(features[:, None, :] - panel[None, :, :], axis=2), axis=1)  # (pool,)
    chosen = [0, 1]
    for p in chosen:
        nearest = np.minimum(nearest, np.linalg.norm(features - features[p], axis=1))
    while len(chosen) < k:
        nearest[chosen] = -1.0
        p = int(np.argmax(nearest))  # first maximum: the lowest position on ties
        chosen.append(p)
        nearest = np.minimum(nearest, np.linalg.norm(features - features[p], axis=1))
    return chosen


def _toml_value(value) -> str:
    """A TOML literal for the plan's values: booleans, integers, strings and lists of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def plan_text(space: str, k: int, holdout: int = 0, *, device: str = "cpu", threads: int | None = None,
              dtype: str = "float32", phase: str = "forward", batch_size: int = 1, seq_len: int | None = None,
              warmup: int = 2, repeats: int = 10, paired_reference: bool = False, pool_size: int = POOL_SIZE,
              command: str = "") -> str:
    """The TOML plan (see the module docstring); every value is validated by ``ProfileRequest`` first.
    ``paired_reference``: every repeat followed by a step of the space's paired reference (CPU only; the run's
    derived device id then ends in ``-paired``, and ``fit-device`` fits its paired latency)."""
    from hwgpt_bench.generation.jobs import ProfileRequest

    sp = get_space(space)
    if isinstance(holdout, bool) or not isinstance(holdout, int) or not 0 <= holdout <= sp.size() - 2:
        raise ValueError(f"holdout: must be an integer in 0..{sp.size() - 2}, got {holdout!r}")
    seq = min(256, sp.block_size) if seq_len is None else seq_len
    positions = fitting_positions(space, k, pool_size)
    pool = min(pool_size, sp.size())
    defaults = {"device": device, "dtype": dtype, "warmup": warmup, "repeats": repeats, "phase": [phase],
                "batch_size": [batch_size], "seq_len": [seq]} | ({"threads": threads} if threads is not None else {})
    if paired_reference:
        defaults["paired_reference"] = True
    entries = [{"space": space, "n": pool, "pick": positions}]
    if holdout:  # positions 0 and 1 of every sample are the space's extremes, already fitted
        entries.append({"space": space, "n": holdout + 2, "seed": HOLDOUT_SEED, "pick": list(range(2, holdout + 2))})
    for entry in entries:
        ProfileRequest(**(defaults | entry)).settings_grid()
    lines = [f"# {command or 'hwgpt-bench plan-device'}",
             f"# A new device in one session: the calibration panel of {space} (start and end, by the session), {k} "
             f"fitting architectures chosen from the release sample (farthest points in cost features"
             + (f"), {holdout} held out." if holdout else ")."),
             "# Run it on an otherwise idle machine: `hwgpt-bench run-plan <this file> --out runs/<device>`.", "",
             "[defaults]"]
    lines += [f"{key} = {_toml_value(v)}" for key, v in defaults.items()]
    for entry, title in zip(entries, ("fitting architectures: positions of the seed-0 sample",
                                      f"held-out architectures: positions 2..{holdout + 1} of seed {HOLDOUT_SEED}"),
                            strict=False):
        lines += ["", f"# {title}", "[[profile]]"]
        lines += [f"{key} = {_toml_value(v)}" for key, v in entry.items()]
    return "\n".join(lines) + "\n"


def write_plan(text: str, out: str | Path) -> Path:
    """Write ``text`` to ``out`` atomically; an existing file is an error (nothing is overwritten)."""
    out = Path(out)
    if out.exists():
        raise ValueError(f"out: {out} exists; choose another path (an existing plan is never overwritten)")
    write_text_atomic(text, out)
    log.info("wrote %s", out)
    return out
