"""``generation.bf16``: bfloat16 matmuls as float32 GEMMs of the bfloat16 values give bfloat16's products."""

from __future__ import annotations

import contextlib

import pytest
import torch

from hwgpt_bench.generation.bf16 import Float32GemmForBfloat16, bf16_gemm_context


def _operands(*shapes: tuple[int, ...]) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(*shape, generator=gen) for shape in shapes]


def _ulp_differences(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance of two bfloat16 tensors in units in the last place (their bit patterns as integers)."""
    return (a.view(torch.int16).int() - b.view(torch.int16).int()).abs()


CASES = {
    "linear (addmm)": (lambda x, w, b: torch.nn.functional.linear(x, w, b), ((64, 96), (48, 96), (48,))),
    "matmul (mm)": (lambda x, w: x @ w, ((64, 96), (96, 48))),
    "batched (bmm)": (lambda x, w: torch.bmm(x, w), ((4, 32, 40), (4, 40, 24))),
    "batched with input (baddbmm)": (lambda c, x, w: torch.baddbmm(c, x, w), ((4, 32, 24), (4, 32, 40), (4, 40, 24))),
}


@pytest.mark.parametrize("name", list(CASES))
def test_products_are_bfloat16_products(name):
    op, shapes = CASES[name]
    args = _operands(*shapes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        native = op(*args)
        with Float32GemmForBfloat16():
            emulated = op(*args)
    assert emulated.dtype == native.dtype == torch.bfloat16
    assert emulated.shape == native.shape
    ulps = _ulp_differences(emulated, native)
    assert int(ulps.max()) <= 1  # float32 sums in another order: at most one bfloat16 ulp apart
    assert float((ulps == 0).float().mean()) > 0.99
    # and not float32's product: rounding to bfloat16 is part of the recipe
    exact = op(*[a.bfloat16().float() for a in args])
    assert not torch.equal(emulated.float(), exact)


def test_small_integers_are_exact():
    """Products of small integers are exact in float32 and in bfloat16: the two paths agree bit for bit."""
    gen = torch.Generator().manual_seed(1)
    x, w = torch.randint(-4, 5, (16, 8), generator=gen).float(), torch.randint(-4, 5, (8, 4), generator=gen).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        native = x @ w
        with Float32GemmForBfloat16():
            emulated = x @ w
    assert torch.equal(emulated, native)
    assert torch.equal(emulated.float(), x @ w)


def test_gradients_take_the_same_path():
    """The mode sits below autograd: the backward pass's matmuls give bfloat16's gradients too."""
    x, w = _operands((32, 24), (16, 24))
    grads = []
    for mode in (contextlib.nullcontext(), Float32GemmForBfloat16()):
        leaf = w.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16), mode:
            torch.nn.functional.linear(x, leaf).float().square().sum().backward()
        grads.append(leaf.grad)
    assert grads[0].dtype == grads[1].dtype == torch.float32
    torch.testing.assert_close(grads[1], grads[0], rtol=2e-2, atol=1e-2)


def test_float32_work_is_untouched():
    x, w = _operands((16, 8), (8, 4))
    with Float32GemmForBfloat16():
        out = x @ w
    assert out.dtype == torch.float32 and torch.equal(out, x @ w)


@pytest.mark.parametrize(("dtype", "device", "native", "emulates"), [
    ("bfloat16", "cpu", False, True),
    ("bfloat16", "cpu", True, False),
    ("bfloat16", "cpu", None, False),  # flags unreadable: unknown, PyTorch's own path
    ("float32", "cpu", False, False),
    ("bfloat16", "cuda:0", False, False),
])
def test_context_only_where_bfloat16_is_not_native(dtype, device, native, emulates):
    context = bf16_gemm_context(dtype, device, native)
    assert isinstance(context, Float32GemmForBfloat16) is emulates
