"""Milliseconds of the standalone / supernet training's matrix multiplies in float32 and under bfloat16 autocast.

    python benchmarks/bf16_matmul.py [--rows 1024] [--repeats 3] [--threads 2]

Why a bfloat16 recipe can take a host hours instead of minutes: on a CPU without native bfloat16
(``environment.cpu_has_native_bf16``: no avx512_bf16 / amx_bf16), PyTorch's CPU matmul in bfloat16 does not go
through the float32 BLAS at all. One row per shape of gpt-nano training (``--rows`` tokens x the layer's in and out
features: embedding 256 into an MLP of 4x, back, and an attention projection; the 50,304-wide output layer is left out,
it alone takes seconds per call there), each timed as float32, as bfloat16 tensors and as float32 tensors under
``torch.autocast("cpu", torch.bfloat16)`` (what training does), after one untimed call; the median of ``--repeats``
interleaved calls, measured in one run, and the ratio to float32. Run it on an otherwise idle machine. Nothing is
written.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch

from hwgpt_bench.generation.environment import cpu_fingerprint, cpu_has_native_bf16

#: (in features, out features) of gpt-nano's largest standalone architecture's linear layers (embedding 256)
SHAPES = ((256, 1024), (1024, 256), (256, 768), (256, 256))
KINDS = ("float32", "bfloat16", "autocast")


def _call(kind: str, a: torch.Tensor, b: torch.Tensor) -> Callable[[], torch.Tensor]:
    """One matmul of ``a`` ``(rows, k)`` by ``b`` ``(k, n)`` the way ``kind`` computes it."""
    if kind == "bfloat16":
        a16, b16 = a.bfloat16(), b.bfloat16()
        return lambda: a16 @ b16
    if kind == "autocast":
        def autocast() -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return a @ b
        return autocast
    return lambda: a @ b


def time_shape(rows: int, k: int, n: int, repeats: int) -> dict[str, float]:
    """Median milliseconds per ``KINDS`` of a ``(rows, k) @ (k, n)`` matmul, the kinds interleaved per repeat."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(rows, k, generator=gen), torch.randn(k, n, generator=gen)
    calls = {kind: _call(kind, a, b) for kind in KINDS}
    for call in calls.values():
        call()  # untimed: first-call setup
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for _ in range(repeats):
        for kind, call in calls.items():
            started = time.perf_counter()
            call()
            times[kind].append(1e3 * (time.perf_counter() - started))
    return {kind: statistics.median(v) for kind, v in times.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1024, help="tokens per matmul (default 1024; training: 4096)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per kind and shape (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args(argv)
    for name, value in (("rows", args.rows), ("repeats", args.repeats), ("threads", args.threads)):
        if value < 1:
            parser.error(f"--{name}: needs a positive integer, got {value}")
    torch.set_num_threads(args.threads)
    cpu = cpu_fingerprint()
    print(f"# {cpu['model_name']} (family {cpu['cpu_family']} model {cpu['cpu_model']} stepping "
          f"{cpu['cpu_stepping']}), native bfloat16: {cpu_has_native_bf16()}, torch {torch.__version__}, "
          f"{args.threads} threads, {args.rows} rows")
    print("| in x out | float32 ms | bfloat16 ms | autocast ms | autocast / float32 |")
    print("|---|---|---|---|---|")
    for k, n in SHAPES:
        ms = time_shape(args.rows, k, n, args.repeats)
        print(f"| {k} x {n} | {ms['float32']:.2f} | {ms['bfloat16']:.2f} | {ms['autocast']:.2f} | "
              f"{ms['autocast'] / ms['float32']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
