"""Rows of the ``architectures`` table from seeded samples of a search space (pure Python, no torch)."""

from __future__ import annotations

from hwgpt_bench.search_spaces import ArchConfig, get_space, sample_archs


def architecture_row(arch: ArchConfig, sample_seed: int, sample_index: int) -> dict:
    """One ``architectures`` row: the fields, exact sizes and where in which seeded sample the arch was drawn."""
    sp = arch.search_space
    return {
        "arch_id": arch.arch_id,
        "space": arch.space,
        "canonical": arch.canonical,
        "embed_dim": arch.embed_dim,
        "n_layer": arch.n_layer,
        "n_head": list(arch.n_head),
        "mlp_ratio": list(arch.mlp_ratio),
        "bias": arch.bias,
        "params": arch.num_params(),
        "params_non_embedding": arch.num_params(include_embedding=False),
        "flops_per_token": arch.forward_flops(1) // sp.block_size,
        "sample_seed": sample_seed,
        "sample_index": sample_index,
    }


def sample_with_rows(space: str, n: int, seed: int) -> tuple[list[ArchConfig], list[dict]]:
    """The seeded sample of ``n`` archs of ``space`` (extremes first) and their ``architectures`` rows."""
    get_space(space)
    archs = sample_archs(space, n, seed=seed, include_extremes=True)
    return archs, [architecture_row(a, seed, i) for i, a in enumerate(archs)]
