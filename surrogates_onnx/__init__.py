"""ONNX surrogates with conformal intervals; the runtime needs numpy + onnxruntime only."""

from hwgpt_bench.surrogates_onnx.runtime import Prediction, Surrogate, list_models

__all__ = ["Prediction", "Surrogate", "list_models"]
