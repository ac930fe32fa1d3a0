"""The benchmark's option values, in a module that imports nothing (the CLI's parser reads them)."""

MODES = ("surrogate", "table")  # where answers come from: the ONNX surrogates or the release's measurements
NOISE = ("none", "sample")  # the noise-free answer, or one plausible measurement drawn per architecture
DOMAINS = ("space", "measured")  # which architectures sample / project give: the whole space or the measured ones
