"""Sandwich-rule training of a weight-sharing supernet (``SuperGPT``) on the project's token files.

Each optimiser step trains, on the same batch, the space's largest subnet, its smallest subnet and
``n_random_subnets`` uniformly drawn ones (the sandwich rule of BigNAS / HW-GPT-Bench), summing their losses (so their
gradients add up in the shared weights). Learning rate: linear warm-up, then cosine decay to ``min_lr``; AdamW with
weight decay on matrices only; gradient accumulation over ``grad_accum_steps`` micro-batches.

Reproducibility and resumption: all randomness of step ``s`` (its batch and its random subnets) is derived from
``(seed, s)`` alone, so a run resumed from a checkpoint draws exactly what an uninterrupted run would, and every DDP
rank draws the same subnets. Checkpoints live in ``out_dir/checkpoints/step_NNNNNN/`` (``supernet.safetensors``,
``optimizer.safetensors`` and ``state.json`` with the step, config and RNG state; no pickle), each folder renamed into
place when complete, and ``checkpoints/latest.json`` (atomically replaced) names the newest.

Data parallel: launched with ``torchrun`` (``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` set), every rank takes its slice of
each step's global batch, the gradients are all-reduced (averaged) by hand after the accumulation (several subnets per
step leave parameters unused in some passes, which plain DDP would trip over), and only rank 0 writes files.

Run: ``python -m hwgpt_bench.generation.train --data-dir runs/corpus --out-dir runs/supernet-gpt-nano``.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import logging
import math
import os
import random
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from hwgpt_bench.files import atomic_output, file_sha256, write_json_atomic
from hwgpt_bench.search_spaces import ArchConfig, SearchSpace, get_space, random_arch

from .checkpoints import SIDECAR, SIDECAR_FORMAT
from .corpus import load_tokens
from .perplexity import evaluate_perplexity
from .supernet import SuperGPT, save_supernet

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "hwgpt-bench-train/1"  # ``format`` of state.json
CURVE_COLUMNS = ("step", "lr", "loss_largest", "loss_smallest", "loss_random", "heldout_loss_largest",
                 "heldout_loss_smallest", "elapsed_s", "tokens_seen")  # n_eval_random = 0; else see curve_columns
DTYPES = {"float32": None, "bfloat16": torch.bfloat16}  # training compute dtype -> autocast dtype (None: plain fp32)
# Fields that may change between a run and its resumption (they do not change what is trained).
RESUMABLE_CHANGES = frozenset({"data_dir", "out_dir", "log_interval", "eval_interval", "eval_tokens", "ckpt_interval"})
KEEP_CHECKPOINTS = 2  # newest checkpoint folders kept; older ones are deleted after a new one is in place


@dataclass
class TrainConfig:
    """Everything that determines a supernet training run (the defaults train ``gpt-nano`` on 2 CPU cores).

    Measured step time with these defaults (torch 2.13 CPU, fp32, 2 threads, this project's 2-core VM): 4.6-5.6 s
    per optimiser step (4 subnets x forward+backward over 16 x 256 tokens; the largest subnet alone is about 2 s),
    up to ~10 s while other jobs compete for the cores; a held-out evaluation adds ~8 s. The default 1000 steps
    therefore take about 1.5 h and see 4.1M tokens, ~1.8 passes over the 2.3M training tokens of the default corpus.
    ``dtype="bfloat16"`` takes 2.8 s per step where float32 takes 4.1 s (the AMD host of session 10, alternating
    steps; ``benchmarks/train_speed.py``).
    """

    space: str = "gpt-nano"  # search space name (a key of search_spaces.SPACES)
    data_dir: str = "runs/corpus"  # folder with train.bin and heldout.bin (uint16 token ids, see corpus.py)
    out_dir: str = "runs/supernet-gpt-nano"  # checkpoints, loss_curve.csv and the final supernet.safetensors
    batch_size: int = 16  # sequences per micro-batch, over all ranks together (16 x 256 = 4096 tokens)
    grad_accum_steps: int = 1  # micro-batches per optimiser step; 1 suffices at this batch size on a CPU
    seq_len: int | None = None  # tokens per training sequence; None = the space's block_size (256 for gpt-nano)
    max_steps: int = 1000  # optimiser steps; also the length of the cosine schedule (~1.5 h on 2 CPU cores)
    lr: float = 2e-3  # peak learning rate: small (1-7M parameter) models tolerate the high end of GPT rates
    min_lr: float = 2e-4  # final learning rate of the cosine decay (lr / 10, as in nanoGPT / Chinchilla)
    warmup_steps: int = 100  # linear warm-up from lr / warmup_steps to lr (10% of the run)
    weight_decay: float = 0.1  # AdamW decoupled weight decay on matrices and embeddings (not biases / norms)
    grad_clip: float = 1.0  # clip the global gradient norm of the summed sandwich loss; 0 disables clipping
    n_random_subnets: int = 2  # random subnets per step besides the largest and the smallest (sandwich rule)
    seed: int = 0  # seeds the initial weights and, with the step number, every batch and random subnet
    log_interval: int = 10  # steps between log lines (the loss curve gets every step)
    eval_interval: int = 200  # steps between held-out evaluations of the largest and smallest subnets
    eval_tokens: int = 32768  # held-out targets per evaluation: 128 windows spread over heldout.bin (~8 s)
    ckpt_interval: int = 100  # steps between checkpoints (at most ~8 min of work is lost on a crash)
    device: str = "cpu"  # "cpu" or "cuda"; under torchrun with CUDA, rank r uses cuda:LOCAL_RANK
    # Compute dtype of the training forward/backward: "bfloat16" runs them under torch.autocast (weights, AdamW state
    # and the held-out evaluations stay float32); 1.45x faster per step on this project's AVX-512-BF16 CPU.
    dtype: str = "float32"
    # Fixed random subnets (drawn once from the seed, listed in eval_subnets.json) evaluated on held-out tokens with
    # the largest and smallest, so the loss curves show subnets that are neither extreme.
    n_eval_random: int = 0
    # Train one architecture alone (its canonical string; the standalone ground truth): every step trains only this
    # subnet of a fresh supernet, whose other weights stay unused. Needs n_random_subnets = n_eval_random = 0.
    arch: str | None = None

    def __post_init__(self) -> None:
        get_space(self.space)  # raises ValueError naming ``space`` for an unknown space
        for name in ("batch_size", "grad_accum_steps", "max_steps", "log_interval", "eval_interval", "eval_tokens",
                     "ckpt_interval"):
            _check(name, getattr(self, name), getattr(self, name) >= 1, "must be >= 1")
        for name in ("warmup_steps", "n_random_subnets", "seed", "n_eval_random"):
            _check(name, getattr(self, name), getattr(self, name) >= 0, "must be >= 0")
        for name in ("weight_decay", "grad_clip", "min_lr"):
            _check(name, getattr(self, name), getattr(self, name) >= 0, "must be >= 0")
        _check("lr", self.lr, self.lr > 0, "must be > 0")
        _check("min_lr", self.min_lr, self.min_lr <= self.lr, f"must be <= lr ({self.lr})")
        _check("warmup_steps", self.warmup_steps, self.warmup_steps <= self.max_steps,
               f"must be <= max_steps ({self.max_steps})")
        block = self.space_obj.block_size
        _check("seq_len", self.seq_len, self.seq_len is None or 1 <= self.seq_len <= block, f"must be in [1, {block}]")
        _check("device", self.device, self.device in ("cpu", "cuda"), "must be 'cpu' or 'cuda'")
        _check("dtype", self.dtype, self.dtype in DTYPES, f"must be one of {sorted(DTYPES)}")
        if self.arch is not None:
            try:
                arch = ArchConfig.from_canonical(self.arch)
            except ValueError as err:
                raise ValueError(f"arch: {err}") from err
            _check("arch", self.arch, arch.space == self.space, f"must be an architecture of space {self.space!r}")
            for name in ("n_random_subnets", "n_eval_random"):
                _check(name, getattr(self, name), getattr(self, name) == 0, "must be 0 when arch is set")

    @property
    def space_obj(self) -> SearchSpace:
        return get_space(self.space)

    @property
    def standalone_arch(self) -> ArchConfig | None:
        """The one architecture trained alone, or ``None`` for sandwich-rule supernet training."""
        return None if self.arch is None else ArchConfig.from_canonical(self.arch)

    @property
    def sequence_length(self) -> int:
        return self.seq_len or self.space_obj.block_size

    @property
    def tokens_per_step(self) -> int:
        """Target tokens per optimiser step over all ranks (counted once, although several subnets see them)."""
        return self.batch_size * self.grad_accum_steps * self.sequence_length

    def to_dict(self) -> dict:
        return asdict(self)


def _check(name: str, value, ok: bool, rule: str) -> None:
    if not ok:
        raise ValueError(f"{name}: {rule}, got {value!r}")


# ---- schedule and per-step randomness -------------------------------------------------------------------------------
def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warm-up, then cosine from ``lr`` to ``min_lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))) * (cfg.lr - cfg.min_lr)


def step_archs(cfg: TrainConfig, step: int) -> list[tuple[str, ArchConfig]]:
    """The sandwich of step ``step``: ``[("largest", a), ("smallest", a), ("random", a), ...]``, from (seed, step);
    ``[("standalone", a)]`` when ``cfg.arch`` is set."""
    if cfg.arch is not None:
        return [("standalone", cfg.standalone_arch)]
    space = cfg.space_obj
    rng = random.Random(f"hwgpt-bench-archs:{cfg.seed}:{step}")
    randoms = [("random", random_arch(space, rng)) for _ in range(cfg.n_random_subnets)]
    return [("largest", space.largest()), ("smallest", space.smallest()), *randoms]


def eval_subnets(cfg: TrainConfig) -> list[tuple[str, ArchConfig]]:
    """The subnets whose held-out loss the curve tracks: ``[("largest", a), ("smallest", a), ("random_1", a), ...]``;
    the ``n_eval_random`` random ones are distinct, drawn from ``seed`` alone (never from a step's sandwich).
    ``[("standalone", a)]`` when ``cfg.arch`` is set."""
    if cfg.arch is not None:
        return [("standalone", cfg.standalone_arch)]
    space = cfg.space_obj
    rng = random.Random(f"hwgpt-bench-eval-subnets:{cfg.seed}")
    chosen = [space.largest(), space.smallest()]
    while len(chosen) < 2 + cfg.n_eval_random:
        arch = random_arch(space, rng)
        if arch not in chosen:
            chosen.append(arch)
    roles = ["largest", "smallest", *(f"random_{i}" for i in range(1, cfg.n_eval_random + 1))]
    return list(zip(roles, chosen, strict=True))


def curve_columns(cfg: TrainConfig) -> tuple[str, ...]:
    """The loss curve's header: ``CURVE_COLUMNS`` with one ``heldout_loss_random_<i>`` per tracked random subnet
    before ``elapsed_s``; a standalone run has ``loss_standalone`` and ``heldout_loss_standalone`` instead."""
    if cfg.arch is not None:
        return ("step", "lr", "loss_standalone", "heldout_loss_standalone", "elapsed_s", "tokens_seen")
    extra = tuple(f"heldout_loss_{role}" for role, _ in eval_subnets(cfg)[2:])
    cut = CURVE_COLUMNS.index("elapsed_s")
    return CURVE_COLUMNS[:cut] + extra + CURVE_COLUMNS[cut:]


def step_batches(tokens: np.ndarray, cfg: TrainConfig, step: int, rank: int = 0,
                 world: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's micro-batches of step ``step``: ``grad_accum_steps`` pairs ``(x, y)``, each (batch_size / world,
    seq_len) int64, ``y`` shifted by one token. The global batch (random windows of the train tokens) depends on
    (seed, step) only; rank r takes rows ``[r * b, (r + 1) * b)`` of every micro-batch."""
    t = cfg.sequence_length
    rng = np.random.default_rng([cfg.seed, step, 0x5EED])
    starts = rng.integers(0, len(tokens) - t, size=(cfg.grad_accum_steps, cfg.batch_size))  # (accum, B)
    per_rank = cfg.batch_size // world
    mine = starts[:, rank * per_rank:(rank + 1) * per_rank]  # (accum, B / world)
    out = []
    for row in mine:
        windows = np.stack([np.asarray(tokens[s:s + t + 1], dtype=np.int64) for s in row])  # (b, T + 1)
        w = torch.from_numpy(windows)
        out.append((w[:, :-1], w[:, 1:]))
    return out


# ---- distributed ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: ``rank`` of ``world`` processes, on ``device``."""

    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> DistInfo:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (gloo on CPU, nccl on CUDA); else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but torch sees no CUDA device")
    if world <= 1:
        return DistInfo(device="cuda" if device == "cuda" else "cpu")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    log.info("rank %d of %d (backend %s)", rank, world, dist.get_backend())
    return DistInfo(rank, world, f"cuda:{local_rank}" if device == "cuda" else "cpu")


def _all_reduce_mean(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of ``tensor`` over the ranks (moved to this rank's device for the collective, as nccl requires)."""
    if info.world <= 1:
        return tensor
    on_device = tensor.to(info.device)
    dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
    return (on_device / info.world).to(tensor.device)


def all_reduce_gradients(model: torch.nn.Module, info: DistInfo) -> None:
    """Average every parameter's ``.grad`` over the ranks, in one flat buffer (a missing grad counts as zero)."""
    if info.world <= 1:
        return
    params = list(model.parameters())
    flat = _all_reduce_mean(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                                       for p in params]), info)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def _broadcast_parameters(model: torch.nn.Module, info: DistInfo) -> None:
    if info.world > 1:
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)


# ---- model, optimiser, one step ---------------------------------------------------------------------------------
def build_supernet(cfg: TrainConfig, device: str) -> SuperGPT:
    """A freshly initialised supernet: the same ``seed`` gives the same weights on every rank and device."""
    torch.manual_seed(cfg.seed)
    return SuperGPT(cfg.space_obj).to(device)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW (betas 0.9 / 0.95, as in GPT-3 and nanoGPT); weight decay on tensors with >= 2 dimensions only."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)


def train_step(model: SuperGPT, opt: torch.optim.Optimizer, batches, archs, lr: float, cfg: TrainConfig,
               info: DistInfo) -> dict[str, float]:
    """One sandwich optimiser step; returns the mean training loss (nats/token) per role over ranks."""
    opt.zero_grad(set_to_none=True)
    losses = torch.zeros(len(archs), dtype=torch.float64)
    autocast_dtype = DTYPES[cfg.dtype]
    device_type = torch.device(info.device).type
    for x, y in batches:
        x, y = x.to(info.device), y.to(info.device)
        for i, (_, arch) in enumerate(archs):
            with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                logits = model(x, arch)  # (b, T, V)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
            (loss / len(batches)).backward()
            losses[i] += loss.item() / len(batches)
    all_reduce_gradients(model, info)
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    return _role_losses(_all_reduce_mean(losses, info), archs)


def _role_losses(losses: torch.Tensor, archs) -> dict[str, float]:
    roles = [role for role, _ in archs]
    return {f"loss_{r}": float(np.mean([v for role, v in zip(roles, losses.tolist(), strict=True) if role == r]))
            for r in ("largest", "smallest", "random", "standalone") if r in roles}


def evaluate_heldout(model: SuperGPT, tokens: np.ndarray, cfg: TrainConfig) -> dict[str, float]:
    """Held-out NLL (nats/token, float32) of every ``eval_subnets`` subnet on ``eval_tokens`` targets spread over the
    file, keyed ``heldout_loss_<role>``."""
    out = {}
    for role, arch in eval_subnets(cfg):
        result = evaluate_perplexity(functools.partial(model, arch=arch), tokens, cfg.sequence_length,
                                     batch_size=cfg.batch_size, max_tokens=cfg.eval_tokens)
        out[f"heldout_loss_{role}"] = result.nll
    return out


# ---- checkpoints (safetensors + JSON, no pickle) ---------------------------------------------------------------------
def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """AdamW's state as flat tensors ``state.<param index>.<name>`` plus its JSON-ready ``param_groups``."""
    sd = opt.state_dict()
    tensors = {f"state.{idx}.{key}": value.detach().to("cpu").contiguous()
               for idx, entry in sd["state"].items() for key, value in entry.items()}
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    """Inverse of ``optimizer_tensors``: restore the exact optimiser state."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in groups]
    opt.load_state_dict({"state": state, "param_groups": groups})


def _checkpoint_root(out_dir: Path) -> Path:
    return out_dir / "checkpoints"


def save_checkpoint(out_dir: Path, step: int, model: SuperGPT, opt: torch.optim.Optimizer, cfg: TrainConfig,
                    extra: dict) -> Path:
    """Write ``checkpoints/step_NNNNNN/`` (complete before it appears) and point ``latest.json`` at it."""
    root = _checkpoint_root(out_dir)
    final = root / f"step_{step:06d}"
    tmp = root / f".{final.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir(parents=True)
    save_supernet(model, tmp / "supernet.safetensors")
    tensors, groups = optimizer_tensors(opt)
    save_file(tensors, tmp / "optimizer.safetensors", metadata={"format": CHECKPOINT_FORMAT})
    state = {"format": CHECKPOINT_FORMAT, "step": step, "config": cfg.to_dict(), "param_groups": groups,
             "torch_rng_state": torch.get_rng_state().tolist(), **extra}
    write_json_atomic(state, tmp / "state.json")
    _fsync_files(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_json_atomic({"step": step, "dir": final.name}, root / "latest.json")
    _prune_checkpoints(root, keep=final.name)
    return final


def _fsync_files(folder: Path) -> None:
    """Flush every file of ``folder`` to disk, so that the folder is complete once it is renamed into place."""
    for path in folder.iterdir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())


def _prune_checkpoints(root: Path, keep: str) -> None:
    folders = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in folders[:-KEEP_CHECKPOINTS]:
        if old.name != keep:
            shutil.rmtree(old)


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The folder ``latest.json`` names, or ``None`` when ``out_dir`` has no checkpoint."""
    pointer = _checkpoint_root(Path(out_dir)) / "latest.json"
    if not pointer.exists():
        return None
    return pointer.parent / json.loads(pointer.read_text())["dir"]


def _check_resumable(saved: dict, cfg: TrainConfig) -> None:
    now = cfg.to_dict()
    # Fields added after a checkpoint was written count as their defaults (what that checkpoint trained with).
    saved = {**{f.name: f.default for f in fields(TrainConfig)}, **saved}
    differ = sorted(k for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k])
    if differ:
        raise ValueError(f"config: cannot resume, fields {differ} differ from the checkpoint's "
                         f"({ {k: saved.get(k) for k in differ} }); use another out_dir or the same settings")


def load_checkpoint(folder: Path, model: SuperGPT, opt: torch.optim.Optimizer, cfg: TrainConfig) -> dict:
    """Restore weights, optimiser and torch RNG from ``folder`` into ``model``/``opt``; returns its state.json."""
    state = json.loads((folder / "state.json").read_text())
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint: {folder} has format {state.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    _check_resumable(state["config"], cfg)
    device = next(model.parameters()).device
    model.load_state_dict(load_file(folder / "supernet.safetensors", device=str(device)))
    # Optimiser tensors are read onto the CPU: load_state_dict moves the moments to their parameters' devices and
    # keeps AdamW's ``step`` counters on the CPU, where the non-fused implementation wants them.
    load_optimizer_tensors(opt, load_file(folder / "optimizer.safetensors"), state["param_groups"])
    torch.set_rng_state(torch.tensor(state["torch_rng_state"], dtype=torch.uint8))
    return state


# ---- loss curve ---------------------------------------------------------------------------------------------------
class LossCurve:
    """``loss_curve.csv``: one row per optimiser step (held-out columns empty unless evaluated at that step)."""

    def __init__(self, path: Path, resume_step: int, columns: Sequence[str] = CURVE_COLUMNS) -> None:
        self.path, self.columns = path, tuple(columns)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size == 0:  # created by a run killed before its header reached the disk
            log.info("loss curve %s is empty (no step was written); starting it anew", path)
            path.unlink()
        self._check_header()
        self._truncate(resume_step)
        if not path.exists():  # the header lands whole or not at all: a kill never leaves a curve without one
            with atomic_output(path) as tmp:
                tmp.write_text(",".join(self.columns) + "\n", encoding="utf-8")
        self._fh = open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115  (closed in close())
        self._writer = csv.DictWriter(self._fh, fieldnames=self.columns, lineterminator="\n")

    def _check_header(self) -> None:
        """An existing curve must have this run's columns (a resumed run never rewrites another run's curve)."""
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as fh:
            header = tuple(fh.readline().strip().split(","))
        if header != self.columns:
            raise ValueError(f"loss curve: {self.path} has columns {list(header)}, this run writes "
                             f"{list(self.columns)}; use another out_dir")

    def _truncate(self, resume_step: int) -> None:
        """Drop rows after ``resume_step`` (written after the checkpoint by an interrupted run) and partial lines."""
        if not self.path.exists():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = lines[:1] + [ln for ln in lines[1:] if ln.endswith("\n") and int(ln.split(",")[0]) <= resume_step]
        with atomic_output(self.path) as tmp:
            tmp.write_text("".join(kept), encoding="utf-8")

    def append(self, row: dict) -> None:
        self._writer.writerow({k: row.get(k, "") for k in self.columns})
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


# ---- the training loop ------------------------------------------------------------------------------------------
@dataclass
class _Run:
    """Mutable state of a run: what gets checkpointed besides weights and optimiser."""

    step: int = 0  # completed optimiser steps
    elapsed_s: float = 0.0  # training wall time over all sessions, in seconds
    data_sha256: str = ""


def _load_data(cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray, str]:
    data = Path(cfg.data_dir)
    train, heldout = load_tokens(data / "train.bin"), load_tokens(data / "heldout.bin")
    vocab = cfg.space_obj.vocab_size
    for name, arr in (("train.bin", train), ("heldout.bin", heldout)):
        if len(arr) <= cfg.sequence_length + 1 or int(arr.max()) >= vocab:
            raise ValueError(f"data_dir: {data / name} needs > {cfg.sequence_length + 1} tokens with ids < {vocab}")
    return train, heldout, file_sha256(data / "train.bin")


def _resume(cfg: TrainConfig, model: SuperGPT, opt, run: _Run) -> None:
    folder = latest_checkpoint(cfg.out_dir)
    if folder is None:
        return
    state = load_checkpoint(folder, model, opt, cfg)
    if state["data_sha256"] != run.data_sha256:
        raise ValueError(f"data_dir: train.bin differs from the one the checkpoint in {folder} was trained on")
    run.step, run.elapsed_s = state["step"], state["elapsed_s"]
    log.info("resumed from %s at step %d", folder, run.step)


def _log_row(curve: LossCurve | None, bar, row: dict, cfg: TrainConfig) -> None:
    if curve is None:
        return
    curve.append(row)
    losses = [row[k] for k in ("loss_largest", "loss_smallest", "loss_standalone") if k in row]
    bar.set_postfix(loss="/".join(f"{v:.3f}" for v in losses), lr=f"{row['lr']:.2e}")
    if row["step"] % cfg.log_interval == 0 or any(k.startswith("heldout_") for k in row):
        log.info("step %d: %s", row["step"], {k: round(v, 4) for k, v in row.items() if isinstance(v, float)})


def _one_step(model, opt, train_tokens, heldout, cfg: TrainConfig, info: DistInfo, run: _Run, stop: int) -> dict:
    started = time.perf_counter()
    s = run.step
    losses = train_step(model, opt, step_batches(train_tokens, cfg, s, info.rank, info.world), step_archs(cfg, s),
                        lr_at(s, cfg), cfg, info)
    run.step += 1
    row = {"step": run.step, "lr": lr_at(s, cfg), **losses}
    if info.is_main and (run.step % cfg.eval_interval == 0 or run.step == stop):
        row.update(evaluate_heldout(model, heldout, cfg))
    run.elapsed_s += time.perf_counter() - started
    return row | {"elapsed_s": round(run.elapsed_s, 3), "tokens_seen": run.step * cfg.tokens_per_step}


def _checkpoint_if_due(model, opt, cfg: TrainConfig, info: DistInfo, run: _Run, stop: int) -> None:
    if info.is_main and (run.step % cfg.ckpt_interval == 0 or run.step == stop):
        save_checkpoint(Path(cfg.out_dir), run.step, model, opt, cfg,
                        {"elapsed_s": run.elapsed_s, "data_sha256": run.data_sha256})


def _bf16_gemm_context(cfg: TrainConfig, info: DistInfo):
    """Where bfloat16 autocast runs on a CPU without native bfloat16 (``environment.cpu_has_native_bf16``), its
    matmuls as float32 GEMMs of the bfloat16 values (``generation.bf16``: the same products, PyTorch's own fallback
    there is 50-120x slower); elsewhere a context that changes nothing."""
    from hwgpt_bench.generation.bf16 import bf16_gemm_context
    from hwgpt_bench.generation.environment import cpu_has_native_bf16

    native = cpu_has_native_bf16() if cfg.dtype == "bfloat16" else None
    return bf16_gemm_context(cfg.dtype, info.device, native)


def train_supernet(config: TrainConfig, stop_at_step: int | None = None) -> Path:
    """Train (or resume) the supernet of ``config``; returns the path of ``out_dir/supernet.safetensors``, written
    with its record ``supernet.json`` (``checkpoints.SIDECAR``) once ``max_steps`` are done.

    ``stop_at_step`` ends the session after that many completed steps (with a checkpoint) without changing the
    schedule, which still spans ``max_steps``; a later call with the same config continues from there.
    """
    cfg, info = config, setup_distributed(config.device)
    if cfg.batch_size % info.world:
        raise ValueError(f"batch_size: {cfg.batch_size} is not divisible by the {info.world} ranks")
    stop = min(cfg.max_steps, stop_at_step or cfg.max_steps)
    train_tokens, heldout, sha = _load_data(cfg)
    model = build_supernet(cfg, info.device)
    opt = build_optimizer(model, cfg)
    run = _Run(data_sha256=sha)
    _resume(cfg, model, opt, run)
    _broadcast_parameters(model, info)
    out = Path(cfg.out_dir)
    if info.is_main:
        write_json_atomic(cfg.to_dict(), out / "config.json")
        write_json_atomic({role: arch.canonical for role, arch in eval_subnets(cfg)}, out / "eval_subnets.json")
    with _bf16_gemm_context(cfg, info):
        _loop(model, opt, train_tokens, heldout, cfg, info, run, stop)
    final = out / "supernet.safetensors"
    if info.is_main and run.step == cfg.max_steps:
        save_supernet(model, final)
        write_json_atomic({"format": SIDECAR_FORMAT, "step": run.step, "config": cfg.to_dict(),
                           "elapsed_s": run.elapsed_s, "data_sha256": run.data_sha256}, out / SIDECAR)
    if info.world > 1:
        dist.barrier()
    return final


def _progress_label(cfg: TrainConfig) -> str:
    """The progress bar's label: ``supernet <space>`` or ``standalone <arch_id>`` (its total is ``max_steps`` even
    when a call stops early, so a resumed chunk shows the whole run's progress)."""
    arch = cfg.standalone_arch
    return f"standalone {arch.arch_id}" if arch is not None else f"supernet {cfg.space}"


def _loop(model, opt, train_tokens, heldout, cfg: TrainConfig, info: DistInfo, run: _Run, stop: int) -> None:
    curve = LossCurve(Path(cfg.out_dir) / "loss_curve.csv", run.step, curve_columns(cfg)) if info.is_main else None
    model.train()
    try:
        with logging_redirect_tqdm(), tqdm(total=cfg.max_steps, initial=run.step, desc=_progress_label(cfg),
                                           unit="step", disable=not info.is_main) as bar:
            while run.step < stop:
                row = _one_step(model, opt, train_tokens, heldout, cfg, info, run, stop)
                _log_row(curve, bar, row, cfg)
                _checkpoint_if_due(model, opt, cfg, info, run, stop)
                bar.update(1)
    finally:
        if curve is not None:
            curve.close()


# ---- command line -------------------------------------------------------------------------------------------------
FIELD_HELP = {
    "space": "search space name (default: %(default)s)",
    "data_dir": "folder with train.bin and heldout.bin from corpus.build_corpus (default: %(default)s)",
    "out_dir": "output folder: checkpoints/, loss_curve.csv, config.json, supernet.safetensors (default: %(default)s)",
    "batch_size": "sequences per micro-batch over all ranks (default: %(default)s)",
    "grad_accum_steps": "micro-batches accumulated per optimiser step (default: %(default)s)",
    "seq_len": "tokens per training sequence (default: the space's block_size)",
    "max_steps": "optimiser steps, also the length of the LR schedule (default: %(default)s)",
    "lr": "peak learning rate after warm-up (default: %(default)s)",
    "min_lr": "final learning rate of the cosine decay (default: %(default)s)",
    "warmup_steps": "steps of linear LR warm-up (default: %(default)s)",
    "weight_decay": "AdamW weight decay on matrices (default: %(default)s)",
    "grad_clip": "max global gradient norm; 0 disables clipping (default: %(default)s)",
    "n_random_subnets": "random subnets per step besides the largest and smallest (default: %(default)s)",
    "seed": "seed of the initial weights and of every step's batch and subnets (default: %(default)s)",
    "log_interval": "steps between log lines (default: %(default)s)",
    "eval_interval": "steps between held-out evaluations (default: %(default)s)",
    "eval_tokens": "held-out tokens per evaluation (default: %(default)s)",
    "ckpt_interval": "steps between checkpoints (default: %(default)s)",
    "device": "cpu or cuda (default: %(default)s)",
    "dtype": "compute dtype of training: float32, or bfloat16 under autocast (default: %(default)s)",
    "n_eval_random": "fixed random subnets evaluated on held-out tokens besides the extremes (default: %(default)s)",
    "arch": "train this one architecture alone (canonical string; needs --n-random-subnets 0) (default: the "
            "sandwich-rule supernet)",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hwgpt_bench.generation.train",
                                description="Sandwich-rule supernet training; resumes from out_dir's checkpoint. "
                                            "For data parallelism launch it with torchrun --nproc_per_node N.")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        default = getattr(defaults, f.name)
        kind = {"seq_len": int, "arch": str}.get(f.name, type(default))
        p.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=default,
                       help=FIELD_HELP[f.name])
    p.add_argument("--stop-at-step", type=int, default=None,
                   help="end this session after this many completed steps (checkpointed; the schedule still spans "
                        "max-steps); run again to continue")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--log-level", default="INFO", help="logging level (default: %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if int(os.environ.get("RANK", "0")) != 0:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 speaks for the run
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    try:
        path = train_supernet(cfg, args.stop_at_step)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    log.info("supernet: %s", path if path.exists() else f"{cfg.out_dir} (checkpoint; run again to continue)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
