"""syne-tune's multi-objective searchers on a ``Benchmark``, driven through syne-tune's searcher interface
(``suggest()`` then ``on_trial_complete(trial_id, config, metrics)``) with every objective minimised.

- ``morea-synetune``: ``MultiObjectiveRegularizedEvolution`` (MO-REA, the paper's evolutionary method): a
  population of ``POPULATION`` random configurations, then mutations of the parent ranked best by non-dominated sort
  among ``SAMPLE`` drawn from the population (syne-tune's defaults, 100 and 10, would make a 100-evaluation run pure
  random search).

Why only this one: syne-tune 0.16's package metadata requires xgboost and NVIDIA NCCL (about 480 MB of wheels) that
none of its multi-objective searchers imports, so the ``search`` extra does not pull it; ``make test`` installs the
syne-tune wheel alone (``pip install --no-deps``), on which MO-REA runs. Its EHVI searcher needs botorch and
gpytorch (and fits a Gaussian process per suggestion); its random- and linear-scalarisation Bayesian optimisation
imports a module that 0.16 no longer ships; local search is not in 0.16. Without syne-tune, no method is added.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

POPULATION = 20  # as the other evolutionary methods (methods.POPULATION)
SAMPLE = 5  # candidates drawn from the population to pick a parent


def _syne_tune_space(domains: dict[str, tuple]) -> dict:
    from syne_tune.config_space import choice

    return {key: choice(list(values)) for key, values in domains.items()}


def morea_synetune(evaluator, seed: int) -> None:
    """MO-REA (syne-tune) for the evaluator's remaining budget."""
    from syne_tune.optimizer.schedulers.multiobjective import MultiObjectiveRegularizedEvolution

    bench = evaluator.bench
    space = _syne_tune_space(bench.domains)
    rng = np.random.RandomState(seed)
    # syne-tune 0.16 draws MO-REA's initial population from numpy's global generator (its sample_random_config
    # ignores the searcher's seeded one): draw it here with the seed, as points to evaluate first
    initial = [{k: d.sample(random_state=rng) for k, d in space.items()} for _ in range(POPULATION)]
    searcher = MultiObjectiveRegularizedEvolution(space, points_to_evaluate=initial, population_size=POPULATION,
                                                  sample_size=SAMPLE, random_seed=seed)
    for trial_id in range(evaluator.remaining):
        config = searcher.suggest()
        values = evaluator([bench.to_arch(config)])[0]
        searcher.on_trial_complete(trial_id, config, [float(v) for v in values])


def syne_tune_methods() -> dict[str, Callable]:
    """``{"morea-synetune": ...}`` where syne-tune imports, else ``{}``."""
    try:
        import syne_tune.optimizer.schedulers.multiobjective  # noqa: F401
    except ImportError:
        return {}
    return {"morea-synetune": morea_synetune}
