"""ONNX surrogates with conformal intervals; the runtime needs numpy + onnxruntime only."""
