"""How close the perplexity evaluation runs to this machine's matrix-multiply speed (issue 17's speed table).

    python benchmarks/perplexity_speed.py [--checkpoint runs/supernet-gpt-nano/supernet.safetensors] [--tokens 32768]
        [--threads 2] [--batch-size 8] [--repeats 3]

For the smallest, a middle and the largest gpt-nano architecture, one perplexity evaluation as `hwgpt-bench
eval-perplexity` runs it (``generation.perplexity.evaluate_perplexity`` over ``--tokens`` target tokens in windows of
256, ``--batch-size`` windows per forward) in two ways: through the supernet with the architecture's weights sliced
on the fly (what the release's 2,000 perplexities used) and through the extracted standalone subnet. Achieved GFLOP/s
= the exact matmul FLOPs of the forwards (``ArchConfig.forward_flops``: every linear, the attention scores and the LM
head) / wall time. Reference: the same matmuls (every linear's (tokens x in) @ (in x out), the attention's
per-head (T x hs) @ (hs x T) and (T x T) @ (T x hs), the LM head) timed alone as plain ``torch.matmul`` calls on
preallocated tensors, summed: what this machine reaches on exactly those shapes. The goal is a ratio of at least
0.5. Token ids are seeded random draws (the cost of a forward does not depend on them), so no corpus is needed;
best of ``--repeats``. Run it on an otherwise idle machine. Nothing is written.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from timing import best_of

from hwgpt_bench.generation.perplexity import evaluate_perplexity
from hwgpt_bench.generation.supernet import extract_subnet, load_supernet
from hwgpt_bench.search_spaces import ArchConfig, get_space, sample_archs

SPACE = "gpt-nano"
CHECKPOINT = Path(__file__).resolve().parents[1] / "runs" / "supernet-gpt-nano" / "supernet.safetensors"


def matmul_shapes(arch: ArchConfig, batch: int, seq: int) -> list[tuple[int, int, int, int]]:
    """``(count, m, k, n)`` of every matmul of one forward of ``batch`` sequences of ``seq`` tokens: q/k/v and output
    projections, MLP up and down, per head and sequence the scores and the weighted values, the LM head."""
    sp, d, tokens = arch.search_space, arch.embed_dim, batch * seq
    shapes = []
    for i in range(arch.n_layer):
        a, h = arch.attn_width(i), arch.mlp_width(i)
        shapes += [(3, tokens, d, a), (1, tokens, a, d), (1, tokens, d, h), (1, tokens, h, d),
                   (batch * arch.n_head[i], seq, sp.head_size, seq), (batch * arch.n_head[i], seq, seq, sp.head_size)]
    return [*shapes, (1, tokens, d, sp.vocab_size)]


def matmul_seconds(shapes: list[tuple[int, int, int, int]], repeats: int) -> float:
    """Wall time of all ``shapes`` as plain ``torch.matmul`` calls on preallocated float32 tensors (best of
    ``repeats``, one warm-up)."""
    operands = [(count, torch.randn(m, k), torch.randn(k, n)) for count, m, k, n in shapes]

    def run() -> None:
        for count, a, b in operands:
            for _ in range(count):
                torch.matmul(a, b)

    run()
    return best_of(run, repeats)


def measure(arch: ArchConfig, supernet, tokens: torch.Tensor, batch: int, repeats: int) -> dict:
    """Seconds and GFLOP/s of the evaluation through the supernet and the extracted subnet, and of the matmuls."""
    block = arch.search_space.block_size
    n_windows = tokens.numel() // block
    flops = arch.forward_flops(1, block) * n_windows
    subnet = extract_subnet(supernet, arch)
    ways = {"supernet": functools.partial(supernet, arch=arch), "subnet": subnet}
    out = {}
    for name, fn in ways.items():
        evaluate_perplexity(fn, tokens[:block * batch + 1], block, batch)  # warm-up
        out[name] = best_of(lambda fn=fn: evaluate_perplexity(fn, tokens, block, batch), repeats)
    full, rest = divmod(n_windows, batch)
    shapes = matmul_shapes(arch, batch, block) * full + (matmul_shapes(arch, rest, block) if rest else [])
    out["matmul"] = matmul_seconds(shapes, repeats)
    return {"params_m": arch.num_params() / 1e6, "gflop": flops / 1e9,
            **{f"{k}_gflops": flops / 1e9 / v for k, v in out.items()}}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, default=CHECKPOINT, help="supernet checkpoint (.safetensors)")
    p.add_argument("--tokens", type=int, default=32768, help="target tokens per evaluation (as the release)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward (as eval-perplexity)")
    p.add_argument("--repeats", type=int, default=3, help="timing repeats (best is kept)")
    args = p.parse_args(argv)
    if not args.checkpoint.is_file():
        print(f"{args.checkpoint}: no supernet checkpoint; nothing to do")
        return 0
    torch.set_num_threads(args.threads)
    supernet = load_supernet(args.checkpoint, space=SPACE)
    sp = get_space(SPACE)
    tokens = torch.randint(0, sp.vocab_size, (args.tokens + 1,), generator=torch.Generator().manual_seed(0))
    archs = sorted(sample_archs(SPACE, 200, seed=0), key=lambda a: a.num_params())
    picks = {"smallest": archs[0], "middle": archs[len(archs) // 2], "largest": archs[-1]}
    print(f"perplexity evaluation of {args.tokens:,} tokens, batch {args.batch_size} x {sp.block_size}, "
          f"{args.threads} threads (GFLOP/s of the exact matmul FLOPs):\n")
    print("| architecture | params M | GFLOP | supernet (sliced) | extracted subnet | plain matmuls | "
          "supernet / matmuls | subnet / matmuls |")
    print("|---|---|---|---|---|---|---|---|")
    with torch.inference_mode():
        for label, arch in picks.items():
            r = measure(arch, supernet, tokens, args.batch_size, args.repeats)
            print(f"| {label} | {r['params_m']:.2f} | {r['gflop']:.1f} | {r['supernet_gflops']:.1f} | "
                  f"{r['subnet_gflops']:.1f} | {r['matmul_gflops']:.1f} | "
                  f"{r['supernet_gflops'] / r['matmul_gflops']:.2f} | {r['subnet_gflops'] / r['matmul_gflops']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
