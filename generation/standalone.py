"""Standalone ground truth: architectures trained alone from scratch, to check the supernet's perplexity ranking.

The paper's first open check ("select 20-30 architectures and train them independently from scratch"): does a
subnet's inherited (sliced) perplexity rank architectures as training each one alone would?

1. ``choose_ground_truth`` picks the architectures from a release's default-checkpoint perplexities: half on the
   supernet's Pareto front of (parameters, perplexity), spread evenly in log parameters along it, the rest spread
   evenly over the log-parameter range of all evaluated architectures. ``selection.json`` freezes the choice.
2. ``train_all`` trains each one alone (``generation.train`` with ``arch`` set: a fresh supernet of which only that
   architecture's slice is used, so it is exactly a model of that architecture) with one fixed recipe
   (``STANDALONE_RECIPE``), resumable per architecture and per checkpoint, within a wall-time budget per call, in
   ``training_order`` (spread over the parameter range early, so a run cut short is a sample of the whole range).
3. ``evaluate_all`` scores each finished model on the same held-out windows as the supernet's perplexity rows
   (``perplexity.evaluate_perplexity``, same ``eval_tokens``) and writes ``perplexity``, ``checkpoints`` and
   ``architectures`` parts into a run directory, ``weights = "standalone"`` in ``checkpoints``.

Run: ``hwgpt-bench train-standalone --dataset dataset --data-dir runs/corpus --out runs/standalone-gpt-nano``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from hwgpt_bench.files import write_json_atomic
from hwgpt_bench.loaders.ground_truth import pareto_flags
from hwgpt_bench.search_spaces import ArchConfig, get_space

log = logging.getLogger(__name__)

SELECTION = "selection.json"  # in the output folder: the frozen choice
RUN_DIR = "run"  # in the output folder: the run directory of the evaluation's table parts
# One fixed recipe for every architecture (generation.train.TrainConfig fields). Budget: 1,500 steps of 16 x 256
# tokens (6.1M tokens, ~2.6 passes over the 2.33M training tokens), bfloat16 autocast on 2 threads; about 8 hours
# for 24 architectures spread over the parameter range on this project's 2-core machine.
STANDALONE_RECIPE = {"max_steps": 1500, "warmup_steps": 100, "lr": 2e-3, "min_lr": 2e-4, "batch_size": 16,
                     "weight_decay": 0.1, "grad_clip": 1.0, "dtype": "bfloat16", "seed": 0, "n_random_subnets": 0,
                     "eval_interval": 250, "ckpt_interval": 100}


@dataclass(frozen=True)
class Chosen:
    """One ground-truth architecture: where it sits in its sample and why it was chosen."""

    canonical: str
    sample_seed: int
    sample_index: int
    reason: str  # "pareto" or "spread"

    @property
    def arch(self) -> ArchConfig:
        return ArchConfig.from_canonical(self.canonical)


def _spread(indices: list[int], log_params: list[float], k: int) -> list[int]:
    """``k`` of ``indices`` nearest to ``k`` evenly spaced targets over their log-parameter range (distinct)."""
    if k >= len(indices):
        return list(indices)
    ordered = sorted(indices, key=lambda i: (log_params[i], i))
    lo, hi = log_params[ordered[0]], log_params[ordered[-1]]
    chosen: list[int] = []
    for j in range(k):
        target = lo + (hi - lo) * j / max(1, k - 1)
        free = [i for i in ordered if i not in chosen]
        chosen.append(min(free, key=lambda i: (abs(log_params[i] - target), i)))
    return chosen


def choose_ground_truth(candidates: pl.DataFrame, n: int = 24, n_front: int | None = None) -> list[Chosen]:
    """``n`` architectures of ``candidates`` (columns ``canonical``, ``params``, ``perplexity``, ``sample_seed``,
    ``sample_index``; one space): ``n_front`` (default ``n // 2``) on the Pareto front, the rest spread over all."""
    if candidates.is_empty() or candidates["canonical"].n_unique() != candidates.height:
        raise ValueError("candidates: need one row per architecture, at least one")
    if not 1 <= n <= candidates.height:
        raise ValueError(f"n: must be in [1, {candidates.height}] (the evaluated architectures), got {n}")
    n_front = n // 2 if n_front is None else n_front
    if not 0 <= n_front <= n:
        raise ValueError(f"n_front: must be in [0, {n}], got {n_front}")
    rows = candidates.sort("canonical").to_dicts()
    log_params = [math.log(r["params"]) for r in rows]
    front = [i for i, on in enumerate(pareto_flags([r["params"] for r in rows], [r["perplexity"] for r in rows])) if on]
    picked = {i: "pareto" for i in _spread(front, log_params, n_front)}
    rest = [i for i in range(len(rows)) if i not in picked]
    picked |= {i: "spread" for i in _spread(rest, log_params, n - len(picked))}
    chosen = sorted(picked, key=lambda i: (log_params[i], i))
    return [Chosen(rows[i]["canonical"], int(rows[i]["sample_seed"]), int(rows[i]["sample_index"]), picked[i])
            for i in chosen]


def training_order(n: int) -> list[int]:
    """An order of ``n`` architectures sorted by size that spreads over the range early: the smallest, the largest,
    then each time the one farthest (in rank) from all taken so far (ties: the smaller). A ground truth cut short
    by time is then a sample of the whole range, not only of its small end."""
    order = sorted({0, n - 1}) if n else []
    while len(order) < n:
        order.append(max((i for i in range(n) if i not in order), key=lambda i: (min(abs(i - j) for j in order), -i)))
    return order


def candidates_from_release(root: str | Path, space: str) -> pl.DataFrame:
    """The default checkpoint's perplexity of ``space`` joined with its architectures (the ``choose_ground_truth``
    columns)."""
    from hwgpt_bench.loaders.checkpoints import default_perplexity
    from hwgpt_bench.loaders.io import load_table

    ppl = default_perplexity(root)
    if ppl.is_empty() or ppl.filter(pl.col("space") == space).is_empty():
        raise ValueError(f"dataset: {root} has no perplexity rows of space {space!r} to choose from")
    archs = load_table("architectures", root).select("arch_id", "canonical", "params", "sample_seed", "sample_index")
    return ppl.filter(pl.col("space") == space).select("arch_id", "perplexity").join(archs, on="arch_id")


def write_selection(out: Path, chosen: list[Chosen], source: dict) -> Path:
    """Freeze the choice in ``out/selection.json`` (``source``: where it was chosen from)."""
    payload = {"source": source, "recipe": STANDALONE_RECIPE,
               "architectures": [c.__dict__ for c in chosen]}
    return write_json_atomic(payload, out / SELECTION)


def read_selection(out: Path) -> list[Chosen]:
    """The frozen choice of ``out``; a ``ValueError`` names ``out`` when there is none."""
    path = out / SELECTION
    if not path.is_file():
        raise ValueError(f"out: {path} not found (choose with a release first)")
    return [Chosen(**c) for c in json.loads(path.read_text())["architectures"]]


def arch_dir(out: Path, chosen: Chosen) -> Path:
    return out / chosen.arch.arch_id


def standalone_config(chosen: Chosen, data_dir: str | Path, out: Path, recipe: dict | None = None):
    """The ``TrainConfig`` that trains ``chosen`` alone under ``recipe`` (default ``STANDALONE_RECIPE``)."""
    from hwgpt_bench.generation.train import TrainConfig

    return TrainConfig(space=chosen.arch.space, data_dir=str(data_dir), out_dir=str(arch_dir(out, chosen)),
                       arch=chosen.canonical, **(recipe or STANDALONE_RECIPE))


def train_all(chosen: list[Chosen], data_dir: str | Path, out: Path, budget_s: float | None = None,
              recipe: dict | None = None, clock: Callable[[], float] = time.monotonic) -> list[Chosen]:
    """Train every architecture of ``chosen`` alone, in order, resuming where earlier calls stopped; stop at the first
    checkpoint after ``budget_s`` seconds of this call (None: no limit; ``clock`` in seconds). Architectures already
    evaluated in ``out/run`` are never trained again (``evaluated_arch_ids``). Returns those whose training is
    complete (or evaluated)."""
    from hwgpt_bench.generation.train import train_supernet

    started, done, evaluated = clock(), [], evaluated_arch_ids(out)
    for item in chosen:
        if item.arch.arch_id in evaluated:  # its rows are in the run; its weights may be gone (they stay local)
            done.append(item)
            continue
        cfg = standalone_config(item, data_dir, out, recipe)
        final = Path(cfg.out_dir) / "supernet.safetensors"
        while not final.exists():
            if budget_s is not None and clock() - started >= budget_s:
                log.info("budget of %.0f s spent: stopping before %s", budget_s, item.canonical)
                return done
            step = _completed_steps(Path(cfg.out_dir))
            train_supernet(cfg, stop_at_step=min(cfg.max_steps, step + cfg.ckpt_interval))
        done.append(item)
    return done


def evaluated_arch_ids(out: Path) -> set[str]:
    """Arch ids whose standalone perplexity is already in the run directory ``out/run``: finished for good, even on a
    fresh clone where their weights (kept local, not committed) and checkpoints are absent, so that a later call never
    trains them again over their committed loss curves."""
    from hwgpt_bench.generation.runs import read_parts

    return set(read_parts([Path(out) / RUN_DIR / "perplexity"], "perplexity").column("arch_id").to_pylist())


def _completed_steps(folder: Path) -> int:
    pointer = folder / "checkpoints" / "latest.json"
    return json.loads(pointer.read_text())["step"] if pointer.is_file() else 0


def evaluate_all(chosen: list[Chosen], data_dir: str | Path, out: Path, eval_tokens: int = 32768,
                 batch_size: int = 8) -> int:
    """Score every finished architecture of ``chosen`` that the run directory ``out/run`` lacks on the held-out
    tokens of ``data_dir``; writes ``perplexity``, ``checkpoints`` and ``architectures`` parts. Returns how many."""
    import functools

    from hwgpt_bench.generation.architectures import architecture_row
    from hwgpt_bench.generation.checkpoints import describe_checkpoint
    from hwgpt_bench.generation.corpus import load_tokens
    from hwgpt_bench.generation.jobs import new_run_id, perplexity_row, tokenizer_name, write_checkpoint
    from hwgpt_bench.generation.perplexity import evaluate_perplexity
    from hwgpt_bench.generation.runs import PartWriter, Shard
    from hwgpt_bench.generation.supernet import load_supernet

    tokens, run_dir, run_id, count = load_tokens(Path(data_dir) / "heldout.bin"), out / RUN_DIR, new_run_id(), 0
    for item in chosen:
        weights = arch_dir(out, item) / "supernet.safetensors"
        if not weights.exists():
            continue
        row = describe_checkpoint(weights)
        with PartWriter(run_dir, "perplexity") as writer:
            if (item.arch.arch_id, row["checkpoint_sha256"], "heldout") in writer.done_keys:
                continue
            space = get_space(item.arch.space)
            model = load_supernet(weights, space=space)
            result = evaluate_perplexity(functools.partial(model, arch=item.arch), tokens, space.block_size,
                                         batch_size=batch_size, max_tokens=eval_tokens)
            write_checkpoint(run_dir, weights, row, Shard())
            with PartWriter(run_dir, "architectures") as archs:
                if (item.arch.arch_id,) not in archs.done_keys:
                    archs.add([architecture_row(item.arch, item.sample_seed, item.sample_index)])
            writer.add([perplexity_row(item.arch, result, row["checkpoint_sha256"], tokenizer_name(space.name),
                                       run_id)])
            count += 1
    return count


def run_standalone(out: str | Path, data_dir: str | Path, dataset: str | Path = "dataset", space: str = "gpt-nano",
                   n: int = 24, budget_s: float | None = None, eval_tokens: int = 32768,
                   threads: int | None = None) -> dict:
    """The whole ground truth in ``out``: choose (first call only, from ``dataset``'s default perplexities of
    ``space``), train within ``budget_s`` seconds, evaluate what is finished. Returns counts
    ``{"chosen", "trained", "evaluated"}``. A later call with another ``n`` than the frozen choice is a ``ValueError``.
    """
    import torch

    out = Path(out)
    if not (Path(data_dir) / "train.bin").is_file():
        raise ValueError(f"data_dir: {Path(data_dir) / 'train.bin'} not found (hwgpt-bench prepare-corpus)")
    if (out / SELECTION).is_file():
        chosen = read_selection(out)
        if len(chosen) != n:
            raise ValueError(f"n: {out / SELECTION} froze {len(chosen)} architectures, got n={n}; use another --out")
    else:
        chosen = choose_ground_truth(candidates_from_release(dataset, space), n)
        from hwgpt_bench.loaders.io import read_manifest

        manifest = read_manifest(dataset)
        write_selection(out, chosen, {"dataset_version": manifest["version"], "space": space,
                                      "checkpoints": "default"})
    if threads:
        torch.set_num_threads(threads)
    trained = train_all([chosen[i] for i in training_order(len(chosen))], data_dir, out, budget_s)
    evaluated = evaluate_all(chosen, data_dir, out, eval_tokens=eval_tokens)
    return {"chosen": len(chosen), "trained": len(trained), "evaluated": evaluated}
