"""What a weights file was trained with: one row of the release's ``checkpoints`` table (torch-free).

``generation.train`` leaves a record beside every weights file it writes: ``state.json`` in a checkpoint folder
(``checkpoints/step_NNNNNN/``), ``supernet.json`` beside the final ``supernet.safetensors``. Output folders of
trainings that predate ``supernet.json`` (the 600-step checkpoint of release 0.1.0) hold ``config.json`` and
``loss_curve.csv`` only: their steps are the configured ``max_steps`` (the final file is written only then) and the
training data's hash is unknown (null). ``describe_checkpoint`` reads whichever is there.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from hwgpt_bench.files import file_sha256
from hwgpt_bench.search_spaces import ArchConfig, get_space

SIDECAR = "supernet.json"  # beside the final weights: {"format", "step", "config", "elapsed_s", "data_sha256"}
SIDECAR_FORMAT = "hwgpt-bench-weights/1"
SHA_CHARS = 12  # hex characters of the sha256 prefixes in the tables


def training_record(weights: Path) -> dict:
    """``{"config", "step", "elapsed_s" (or None), "data_sha256" (or None), "curve" (path or None)}`` of ``weights``.

    A ``ValueError`` names ``checkpoint`` when no record lies beside the file.
    """
    folder = weights.parent
    if (folder / "state.json").is_file():  # checkpoints/step_NNNNNN/ of a run
        state = json.loads((folder / "state.json").read_text())
        return {"config": state["config"], "step": int(state["step"]), "elapsed_s": state.get("elapsed_s"),
                "data_sha256": state.get("data_sha256"), "curve": folder.parent.parent / "loss_curve.csv"}
    if (folder / SIDECAR).is_file():
        record = json.loads((folder / SIDECAR).read_text())
        return {"config": record["config"], "step": int(record["step"]), "elapsed_s": record.get("elapsed_s"),
                "data_sha256": record.get("data_sha256"), "curve": folder / "loss_curve.csv"}
    if (folder / "config.json").is_file():  # a final file written before supernet.json existed
        config = json.loads((folder / "config.json").read_text())
        curve = folder / "loss_curve.csv"
        last = _curve_rows(curve)[-1:] if curve.is_file() else []
        return {"config": config, "step": int(config["max_steps"]),
                "elapsed_s": float(last[0]["elapsed_s"]) if last else None, "data_sha256": None, "curve": curve}
    raise ValueError(f"checkpoint: {weights} has no training record beside it (state.json, {SIDECAR} or "
                     "config.json, as hwgpt-bench train-supernet writes them)")


def _curve_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def last_heldout_loss(curve: Path | None, step: int, column: str) -> float | None:
    """The last non-empty ``column`` of the loss curve at or before ``step`` (nats per token), or ``None``."""
    if curve is None or not curve.is_file():
        return None
    values = [float(r[column]) for r in _curve_rows(curve) if r.get(column) and int(r["step"]) <= step]
    return values[-1] if values else None


def _subnet_archs(cfg: dict, curve: Path | None) -> dict[str, str]:
    """``{subnet: canonical}`` of the held-out subnets of a training (``eval_subnets.json`` beside its curve, else the
    space's extremes, or the standalone architecture)."""
    if cfg.get("arch"):
        return {"standalone": cfg["arch"]}
    listed = curve.parent / "eval_subnets.json" if curve is not None else None
    if listed is not None and listed.is_file():
        return dict(json.loads(listed.read_text()))
    space = get_space(cfg["space"])
    return {"largest": space.largest().canonical, "smallest": space.smallest().canonical}


def curve_rows(weights: str | Path) -> list[dict]:
    """The ``training_curves`` rows of ``weights``: every logged train loss and held-out evaluation of its training up
    to its step (empty when no loss curve lies beside its record)."""
    weights = Path(weights)
    record = training_record(weights)
    curve, cfg, step = record["curve"], record["config"], record["step"]
    if curve is None or not curve.is_file():
        return []
    sha, space, archs = file_sha256(weights)[:SHA_CHARS], cfg["space"], _subnet_archs(cfg, curve)
    rows = []
    for r in _curve_rows(curve):
        if int(r["step"]) > step:
            continue
        base = {"checkpoint_sha256": sha, "space": space, "step": int(r["step"]),
                "tokens_seen": int(r["tokens_seen"]), "lr": float(r["lr"])}
        for column, value in r.items():
            if not value or not column.startswith(("loss_", "heldout_loss_")):
                continue
            split = "heldout" if column.startswith("heldout_") else "train"
            subnet = column.removeprefix("heldout_loss_" if split == "heldout" else "loss_")
            rows.append(base | {"split": split, "subnet": subnet, "canonical": archs.get(subnet),
                                "loss": float(value)})
    return rows


def describe_checkpoint(weights: str | Path) -> dict:
    """A ``checkpoints`` row for the weights file ``weights`` (``default`` false: the release build sets it)."""
    weights = Path(weights)
    if not weights.is_file():
        raise ValueError(f"checkpoint: {weights} not found (a .safetensors file from train-supernet)")
    return checkpoint_row(training_record(weights), file_sha256(weights)[:SHA_CHARS])


def checkpoint_row(record: dict, checkpoint_sha256: str) -> dict:
    """The ``checkpoints`` row of a training ``record`` (``training_record``) whose weights hash to
    ``checkpoint_sha256`` (its ``SHA_CHARS``-hex prefix): what ``describe_checkpoint`` writes, also when the weights
    themselves are gone (standalone weights stay local) but their record and the hash in their rows remain."""
    cfg, step = record["config"], record["step"]
    space = get_space(cfg["space"])
    seq_len = cfg.get("seq_len") or space.block_size
    arch = cfg.get("arch")
    column = "heldout_loss_standalone" if arch else "heldout_loss_largest"
    return {
        "checkpoint_sha256": checkpoint_sha256, "space": space.name,
        "weights": "standalone" if arch else "supernet",
        "arch_id": ArchConfig.from_canonical(arch).arch_id if arch else None, "default": False,
        "train_steps": step, "tokens_seen": step * cfg["batch_size"] * cfg.get("grad_accum_steps", 1) * seq_len,
        "batch_size": cfg["batch_size"] * cfg.get("grad_accum_steps", 1), "seq_len": seq_len, "lr": float(cfg["lr"]),
        "min_lr": float(cfg["min_lr"]), "warmup_steps": int(cfg["warmup_steps"]),
        "weight_decay": float(cfg["weight_decay"]), "n_random_subnets": int(cfg["n_random_subnets"]),
        "train_dtype": cfg.get("dtype", "float32"), "seed": int(cfg["seed"]),
        "train_data_sha256": record["data_sha256"][:SHA_CHARS] if record["data_sha256"] else None,
        "train_elapsed_s": None if record["elapsed_s"] is None else float(record["elapsed_s"]),
        "heldout_loss": last_heldout_loss(record["curve"], step, column),
        "config_json": json.dumps(cfg, sort_keys=True),
    }
