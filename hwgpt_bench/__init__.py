"""HW-GPT-Bench: hardware-aware benchmark of GPT-2-family architectures.

Subpackages (mapped from the repository's top-level folders):
``hwgpt_bench.loaders`` (read, validate, aggregate, split the dataset; light),
``hwgpt_bench.generation`` (search spaces, supernet, training, profilers, runs, release build; needs the
``generation`` extra except for the pure-Python search spaces) and
``hwgpt_bench.surrogates_onnx`` (ONNX surrogates: numpy + onnxruntime runtime; training behind ``surrogates``).
"""

__version__ = "0.1.0"
