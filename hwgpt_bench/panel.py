"""The calibration panel of a search space: a small fixed set of architectures every profiling session measures.

Every session (one process on one host) measures its spaces' panels at its start and at its end, with the same
workload, so that drift within a session and differences between sessions and hosts are measured on the same
architectures instead of guessed from the sample (pure Python, no torch).

The rule (``calibration_panel``), fixed forever for a given ``(space, k)``:

1. the pool is the seeded sample ``sample_archs(space, PANEL_POOL_SIZE, seed=PANEL_SEED)`` (smallest and largest
   member at positions 0 and 1; ``PANEL_SEED`` differs from the release samples' seed 0);
2. the pool is ordered by ``forward_flops()`` (one forward at the space's block size, the ``flops_per_token`` of the
   ``architectures`` table times the block), ties broken by ``arch_id``, with the smallest member forced first and the
   largest last (they hold the space's extreme FLOPs; a bias twin has the same FLOPs);
3. the panel is the ``k`` members of that order at evenly spaced quantiles ``j / (k - 1)``, ``j = 0 .. k - 1``
   (position ``round(j * (N - 1) / (k - 1))`` of the ``N`` ordered members): the smallest and largest member are
   always in it, no member twice, FLOPs ascending.
"""

from __future__ import annotations

import functools

from hwgpt_bench.search_spaces import ArchConfig, SearchSpace, get_space, sample_archs

PANEL_SEED = 1729  # seed of the panel's pool; never 0, the seed of the release samples
PANEL_POOL_SIZE = 512  # architectures in the pool the panel is chosen from
PANEL_K = 16  # architectures per panel by default
MIN_K = 2  # the smallest and the largest member


def _space(space: SearchSpace | str) -> SearchSpace:
    return get_space(space) if isinstance(space, str) else get_space(space.name)


def panel_pool(space: SearchSpace | str) -> list[ArchConfig]:
    """The seeded sample the panel is chosen from (its position is each member's ``sample_index``)."""
    sp = _space(space)
    return sample_archs(sp, min(PANEL_POOL_SIZE, sp.size()), seed=PANEL_SEED, include_extremes=True)


def max_k(space: SearchSpace | str) -> int:
    """The largest allowed ``k``: the size of the pool (``PANEL_POOL_SIZE``, or the whole space if it is smaller)."""
    sp = _space(space)
    return min(PANEL_POOL_SIZE, sp.size())


@functools.lru_cache(maxsize=64)
def _members(name: str, k: int) -> tuple[tuple[int, ArchConfig], ...]:
    sp = get_space(name)
    pool = panel_pool(sp)
    index = {a.arch_id: i for i, a in enumerate(pool)}
    smallest, largest = sp.smallest(), sp.largest()
    middle = sorted((a for a in pool if a.arch_id not in (smallest.arch_id, largest.arch_id)),
                    key=lambda a: (a.forward_flops(), a.arch_id))
    ordered = [smallest, *middle, largest]
    last = len(ordered) - 1
    picks = [round(j * last / (k - 1)) for j in range(k)]
    return tuple((index[ordered[p].arch_id], ordered[p]) for p in picks)


def _check_k(sp: SearchSpace, k) -> None:
    high = max_k(sp)
    if isinstance(k, bool) or not isinstance(k, int) or not MIN_K <= k <= high:
        raise ValueError(f"k: must be an integer in {MIN_K}..{high} (architectures of the calibration panel of "
                         f"{sp.name}), got {k!r}")


def panel_members(space: SearchSpace | str, k: int = PANEL_K) -> list[tuple[int, ArchConfig]]:
    """``(sample_index, arch)`` of each panel member, FLOPs ascending; ``sample_index`` is the member's position in
    ``panel_pool(space)``, i.e. in ``sample_archs(space, PANEL_POOL_SIZE, seed=PANEL_SEED)``."""
    sp = _space(space)
    _check_k(sp, k)
    return list(_members(sp.name, k))


def calibration_panel(space: SearchSpace | str, k: int = PANEL_K) -> list[ArchConfig]:
    """The ``k`` architectures of ``space``'s calibration panel, FLOPs ascending (see the module docstring).

    Deterministic: the same ``(space, k)`` always gives the same list. ``ValueError`` naming ``k`` and the allowed
    range ``2 .. max_k(space)``, or naming ``space`` when it is unknown.
    """
    return [arch for _, arch in panel_members(space, k)]


def paired_reference(space: SearchSpace | str) -> ArchConfig:
    """The fixed architecture whose step follows each timed step of a paired measurement of ``space``: the middle
    member of its default calibration panel (position ``PANEL_K // 2``, FLOPs near the space's median), so the
    reference does the same kind of work as the measured models and is measured at every session's panels too."""
    return calibration_panel(space, PANEL_K)[PANEL_K // 2]
