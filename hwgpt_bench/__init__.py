"""HW-GPT-Bench: hardware-aware benchmark of GPT-2-family architectures.

Layout, lowest layer first (each imports only from the layers below it and from itself; ``tests/test_layering.py``
holds the rules):

* the torch-free core in this folder: ``hwgpt_bench.search_spaces`` (spaces, sampling, feature encoding),
  ``hwgpt_bench.metrics`` (the one registry of metric names, units and workload keys) and ``hwgpt_bench.files``;
* ``hwgpt_bench.loaders`` (the repository's ``loaders/``): read, validate, join, aggregate and split the dataset
  (numpy, polars, pyarrow, datasets; plots need the ``plots`` extra);
* ``hwgpt_bench.surrogates_onnx`` (``surrogates_onnx/``): the ONNX surrogates; its runtime needs numpy and
  onnxruntime only, the training and evaluation side the ``surrogates`` extra;
* ``hwgpt_bench.generation`` (``generation/``): supernet, training, profilers, runs and the release build (the
  ``generation`` extra: torch);
* ``hwgpt_bench.benchmark``: the benchmark interface (``Benchmark``) and the search simulation, above the surrogates'
  runtime and the loaders (the optimisers: the ``search`` extra);
* the command line on top: ``hwgpt_bench.cli`` (``hwgpt-bench``, ``python -m hwgpt_bench``).

The names a user touches are re-exported here and imported on first use, so ``import hwgpt_bench`` stays light::

    import hwgpt_bench as hb
    arch = hb.sample_archs("gpt-s", 1, seed=0)[0]
    hb.Surrogate.load("gpt-s", "cpu-amd-epyc-2t", "latency_ms").predict([arch]).point
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first access, PEP 562)
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("ArchConfig", "SearchSpace", "SPACES", "get_space", "sample_archs", "encode", "feature_names"),
                    "hwgpt_bench.search_spaces"),
    **dict.fromkeys(("METRICS", "Metric", "get_metric"), "hwgpt_bench.metrics"),
    **dict.fromkeys(("Surrogate", "Prediction", "list_models"), "hwgpt_bench.surrogates_onnx.runtime"),
    **dict.fromkeys(("load_table", "load_hf"), "hwgpt_bench.loaders.io"),
    "tidy_join": "hwgpt_bench.loaders.join",
    "grouped_split": "hwgpt_bench.loaders.splits",
    "validate_release": "hwgpt_bench.loaders.validate",
    "Benchmark": "hwgpt_bench.benchmark.interface",
    **dict.fromkeys(("Normalisation", "hypervolume", "nondominated"), "hwgpt_bench.benchmark.pareto"),
}

# spelled out for static tools (ruff, type checkers); tests/test_public_api.py checks it matches _EXPORTS
__all__ = [
    "ArchConfig", "SearchSpace", "SPACES", "get_space", "sample_archs", "encode", "feature_names",
    "METRICS", "Metric", "get_metric",
    "Surrogate", "Prediction", "list_models",
    "load_table", "load_hf", "tidy_join", "grouped_split", "validate_release",
    "Benchmark", "Normalisation", "hypervolume", "nondominated",
]

if TYPE_CHECKING:  # for type checkers and IDEs only; at run time the names come from __getattr__
    from hwgpt_bench.benchmark.interface import Benchmark
    from hwgpt_bench.benchmark.pareto import Normalisation, hypervolume, nondominated
    from hwgpt_bench.loaders.io import load_hf, load_table
    from hwgpt_bench.loaders.join import tidy_join
    from hwgpt_bench.loaders.splits import grouped_split
    from hwgpt_bench.loaders.validate import validate_release
    from hwgpt_bench.metrics import METRICS, Metric, get_metric
    from hwgpt_bench.search_spaces import (
        SPACES,
        ArchConfig,
        SearchSpace,
        encode,
        feature_names,
        get_space,
        sample_archs,
    )
    from hwgpt_bench.surrogates_onnx.runtime import Prediction, Surrogate, list_models


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
