"""bfloat16 matrix multiplies on CPUs without native bfloat16, at float32 BLAS speed and with bfloat16's values.

Under ``torch.autocast("cpu", torch.bfloat16)`` a matmul's inputs are rounded to bfloat16 and its output is bfloat16.
Where the CPU has no bfloat16 instructions (``environment.cpu_has_native_bf16`` is False), PyTorch computes that
matmul in a single-threaded fallback 52-123x slower than float32 (``benchmarks/bf16_matmul.py``, a Zen 3 host), so
a bfloat16 training recipe takes such a host hours per architecture.

``Float32GemmForBfloat16`` computes the same thing the fast way: each bfloat16 operand is widened to float32 (exact:
every bfloat16 value is a float32 value), multiplied by the float32 BLAS, which accumulates in float32 as native
bfloat16 GEMMs do, and the result is rounded to bfloat16. It differs from any other bfloat16 GEMM only in the order
of the float32 summation (one bfloat16 ulp on about 0.02% of the elements of a 256 x 512 x 128 product against
PyTorch's own fallback); nothing else of the recipe changes. The mode sits below autograd, so the backward pass's
matmuls take the same path.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch.utils._python_dispatch import TorchDispatchMode

log = logging.getLogger(__name__)

_ATEN = torch.ops.aten
#: the matrix products autocast runs in bfloat16 (``F.linear`` and ``@`` reach these on CPU; their ``.default``
#: overloads take no ``out=``, so the result is always a new tensor)
GEMM_OPS = frozenset({_ATEN.mm.default, _ATEN.addmm.default, _ATEN.bmm.default, _ATEN.baddbmm.default})


def _widen(value):
    return value.float() if isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16 else value


class Float32GemmForBfloat16(TorchDispatchMode):
    """Within this mode, every ``GEMM_OPS`` call with a bfloat16 tensor argument runs in float32 on the widened
    operands and returns its result rounded to bfloat16 (the module docstring says why that is the same product)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in GEMM_OPS and any(isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 for a in args):
            widened = [_widen(a) for a in args]
            return func(*widened, **{k: _widen(v) for k, v in kwargs.items()}).to(torch.bfloat16)
        return func(*args, **kwargs)


def bf16_gemm_context(dtype: str, device: str, native: bool | None) -> contextlib.AbstractContextManager:
    """``Float32GemmForBfloat16()`` when a ``dtype == "bfloat16"`` workload runs on a CPU ``device`` whose CPU has no
    native bfloat16 (``native`` is False: ``environment.cpu_has_native_bf16()``); otherwise a context that changes
    nothing (native bfloat16, a GPU, float32, or unknown flags)."""
    if dtype == "bfloat16" and torch.device(device).type == "cpu" and native is False:
        log.info("bfloat16 on a CPU without avx512_bf16 / amx_bf16: its matmuls run as float32 GEMMs of the bfloat16 "
                 "values, rounded to bfloat16 (PyTorch's own fallback there is 50-120x slower)")
        return Float32GemmForBfloat16()
    return contextlib.nullcontext()
