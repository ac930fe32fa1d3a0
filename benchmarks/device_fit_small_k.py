"""fit-device at small K on a device this project measured: which prior helps when only K architectures are known.

    python benchmarks/device_fit_small_k.py [--runs runs/cpu-intel-xeon-1t-a3af7266] [--space gpt-nano]
        [--dataset dataset] [--prior-device cpu-intel-xeon-2t-d712558a] [--ks 10 20] [--draws 30]

The run's fitting architectures (its plan's K and the panel, ``device_fit.measured_repeats``) are the pool; per K and
draw (seeded), K of them are drawn and four ``device_fit`` models fitted, then judged on the run's held-out
architectures (Kendall tau of the point against their medians, coverage of their single repeats at 0.9):

* **flops**: log FLOPs and log parameters, slopes shrunk towards zero;
* **plain**: log FLOPs, log parameters and layers (``fit-device`` without options);
* **slopes**: the same and log embedding width (``SLOPES_FEATURES``), slopes shrunk towards the release's other
  devices' (``fit-device --slopes-from DATASET``, ``release_slopes``: their mean and covariance);
* **prior**: plain plus the log point of a shipped device's surrogate (``fit-device --prior DEVICE``).

Prints the means over draws and, last, each model on all the pool's architectures. Nothing is measured or written.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from scipy.stats import kendalltau

from hwgpt_bench.surrogates_onnx.device_fit import (
    SLOPES_FEATURES,
    design,
    fit_device,
    measured_repeats,
    release_slopes,
)
from hwgpt_bench.surrogates_onnx.runtime import Surrogate, encode_archs


def coverage(fit, z, values: list[np.ndarray], level: float = 0.9) -> float:
    """Mean over architectures of the share of their single repeats inside ``fit``'s ``level`` interval at ``z``."""
    _, lower, upper = fit.predict(z)
    j = fit.levels.index(level)
    return float(np.mean([np.mean((v >= lo) & (v <= up)) for v, lo, up in zip(values, lower[:, j], upper[:, j],
                                                                               strict=True)]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", default=["runs/cpu-intel-xeon-1t-a3af7266"])
    parser.add_argument("--space", default="gpt-nano")
    parser.add_argument("--dataset", default="dataset", help="release whose other devices give the slopes")
    parser.add_argument("--prior-device", default="cpu-intel-xeon-2t-d712558a")
    parser.add_argument("--ks", nargs="+", type=int, default=[10, 20])
    parser.add_argument("--draws", type=int, default=30)
    args = parser.parse_args(argv)
    data = measured_repeats(args.runs, args.space, "latency_ms")
    if not data["holdout"]:
        raise SystemExit(f"--runs: {args.runs} have no held-out architectures to judge on (plan-device --holdout)")
    pool, held = sorted(data["fit"]), sorted(data["holdout"])
    x_pool = encode_archs([data["archs"][a] for a in pool], args.space)
    x_held = encode_archs([data["archs"][a] for a in held], args.space)
    medians = np.array([np.median(data["holdout"][a]) for a in held])
    values = [data["holdout"][a] for a in held]
    mean, cov, devices = release_slopes(args.dataset, args.space, "latency_ms", data["workload"], data["device_id"])
    prior = Surrogate.load(args.space, args.prior_device, "latency_ms", data["workload"])
    designs = {  # name -> (pool design, held-out design, fit_device options)
        "flops": (design(x_pool, args.space)[:, :2], design(x_held, args.space)[:, :2], {}),
        "plain": (design(x_pool, args.space), design(x_held, args.space), {}),
        "slopes": (design(x_pool, args.space, columns=SLOPES_FEATURES),
                   design(x_held, args.space, columns=SLOPES_FEATURES), {"coef_prior": mean, "coef_cov": cov}),
        "prior": (design(x_pool, args.space, prior.predict_features(x_pool).point),
                  design(x_held, args.space, prior.predict_features(x_held).point), {}),
    }
    print(f"{data['device_id']}: {len(pool)} fitting architectures, {len(held)} held out; slopes from "
          f"{', '.join(devices)}; prior {args.prior_device}\n")
    print("| K | draws | " + " | ".join(f"tau {n}" for n in designs) + " | " +
          " | ".join(f"cov 0.9 {n}" for n in designs) + " |")
    print("|---|---|" + "---|" * (2 * len(designs)))
    for k in [*args.ks, len(pool)]:
        draws = args.draws if k < len(pool) else 1
        taus: dict[str, list[float]] = {n: [] for n in designs}
        covs: dict[str, list[float]] = {n: [] for n in designs}
        for draw in range(draws):
            pick = np.random.default_rng(draw).choice(len(pool), k, replace=False) if k < len(pool) \
                else np.arange(len(pool))
            repeats = [data["fit"][pool[i]] for i in pick]
            for name, (z_pool, z_held, options) in designs.items():
                fit = fit_device(z_pool[pick], repeats, args.space, [f"z{i}" for i in range(z_pool.shape[1])],
                                 **options)
                taus[name].append(float(kendalltau(fit.predict(z_held)[0], medians).statistic))
                covs[name].append(coverage(fit, z_held, values))
        print(f"| {k} | {draws} | " + " | ".join(f"{np.mean(taus[n]):.3f}" for n in designs) + " | " +
              " | ".join(f"{np.mean(covs[n]):.2f}" for n in designs) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
