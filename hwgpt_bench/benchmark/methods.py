"""Search methods from established optimisers, wrapped (not re-implemented) to run on a ``Benchmark``.

Each method gets an ``Evaluator`` (the benchmark behind a budget) and a seed, and proposes architectures until the
budget is spent. Every objective is minimised (higher-is-better ones negated, ``pareto.minimisation_matrix``).

- ``random``: optuna's ``RandomSampler``;
- ``motpe-optuna``: optuna's ``TPESampler`` on several objectives (MOTPE, Ozaki et al. 2020/2022), multivariate;
- ``nsga2-optuna``: optuna's ``NSGAIISampler``;
- ``nsga2-pymoo``, ``smsemoa-pymoo``: pymoo's ``NSGA2`` and ``SMSEMOA`` on the integer vectors of ``space``
  (integer random sampling; SBX crossover and polynomial mutation with rounding repair, pymoo's recipe for
  discrete variables), population ``POPULATION``;
- syne-tune's methods where syne-tune is installed (``syne_tune_methods``).

Optuna asks for the per-layer keys of active layers only (define-by-run, so conditional as the space is); pymoo
evolves every key and inactive positions are ignored (``space.from_vectors``).
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from hwgpt_bench.search_spaces import ArchConfig

from . import space as config_spaces
from .interface import Benchmark
from .pareto import minimisation_matrix

log = logging.getLogger(__name__)

POPULATION = 20  # population of the evolutionary methods (pymoo, optuna's NSGA-II)


class BudgetSpent(Exception):
    """Raised by an ``Evaluator`` asked for more evaluations than its budget (stops a method's loop)."""


class Evaluator:
    """The benchmark behind a budget: evaluates batches, records the trajectory, times the benchmark's share.

    ``records`` holds one dict per evaluation (at most ``budget``): ``eval`` (1-based), ``arch_id``, ``canonical``,
    ``proposed_arch_id`` (what the method asked for; differs when ``Benchmark.project`` moved it to a measured
    architecture), ``observed_<objective>`` (what the method saw) and ``<objective>`` (the noise-free answer).
    """

    def __init__(self, bench: Benchmark, budget: int) -> None:
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ValueError(f"budget: a positive number of evaluations expected, got {budget!r}")
        self.bench, self.budget = bench, budget
        self.records: list[dict] = []
        self.benchmark_s = 0.0
        self._signs = {o.name: o.lower_is_better for o in bench.objectives}

    @property
    def remaining(self) -> int:
        return self.budget - len(self.records)

    def __call__(self, archs: Sequence[ArchConfig]) -> np.ndarray:
        """Minimised observed values ``(N, M)`` of ``archs``; records the first ``remaining`` of them.

        Raises ``BudgetSpent`` when nothing of the budget is left (methods that overshoot within a batch, as a
        population does, get answers for the whole batch; only the budget's share is recorded).
        """
        if self.remaining <= 0:
            raise BudgetSpent
        start = time.perf_counter()
        evaluated = self.bench.project(archs)
        observed = self.bench.evaluate(evaluated)
        truth = observed if self.bench.noise == "none" else self.bench.evaluate(evaluated, noise="none")
        for i in range(min(len(evaluated), self.remaining)):
            row = {"eval": len(self.records) + 1, "arch_id": evaluated[i].arch_id, "canonical": evaluated[i].canonical,
                   "proposed_arch_id": archs[i].arch_id}
            row.update({f"observed_{n}": float(v[i]) for n, v in observed.items()})
            row.update({n: float(v[i]) for n, v in truth.items()})
            self.records.append(row)
        self.benchmark_s += time.perf_counter() - start
        return minimisation_matrix(observed, self.bench.objective_names, self._signs)


# ---- optuna ----------------------------------------------------------------------------------------------------------
def _optuna_config(trial, domains: dict[str, tuple]) -> dict:
    """Define-by-run configuration: the global keys, then the per-layer keys of the active layers only."""
    config = {"embed_dim": trial.suggest_categorical("embed_dim", list(domains["embed_dim"])),
              "n_layer": trial.suggest_categorical("n_layer", list(domains["n_layer"]))}
    for i in range(config["n_layer"]):
        config[f"n_head_{i}"] = trial.suggest_categorical(f"n_head_{i}", list(domains[f"n_head_{i}"]))
        config[f"mlp_ratio_{i}"] = trial.suggest_categorical(f"mlp_ratio_{i}", list(domains[f"mlp_ratio_{i}"]))
    config["bias"] = trial.suggest_categorical("bias", list(domains["bias"]))
    return config


def _run_optuna(sampler, evaluator: Evaluator) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    bench = evaluator.bench
    study = optuna.create_study(directions=["minimize"] * len(bench.objective_names), sampler=sampler)
    domains = bench.domains

    def objective(trial) -> tuple[float, ...]:
        arch = bench.to_arch(_optuna_config(trial, domains))
        return tuple(float(v) for v in evaluator([arch])[0])

    study.optimize(objective, n_trials=evaluator.remaining)


def random_search(evaluator: Evaluator, seed: int) -> None:
    import optuna

    _run_optuna(optuna.samplers.RandomSampler(seed=seed), evaluator)


def motpe_optuna(evaluator: Evaluator, seed: int) -> None:
    import optuna

    with warnings.catch_warnings():  # multivariate and group (conditional keys) are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True)
    _run_optuna(sampler, evaluator)


def nsga2_optuna(evaluator: Evaluator, seed: int) -> None:
    import optuna

    _run_optuna(optuna.samplers.NSGAIISampler(seed=seed, population_size=POPULATION), evaluator)


# ---- pymoo -----------------------------------------------------------------------------------------------------------
def _pymoo_problem(evaluator: Evaluator):
    from pymoo.core.problem import Problem

    bench = evaluator.bench
    lower, upper = config_spaces.vector_bounds(bench.space)

    class ArchProblem(Problem):
        def __init__(self) -> None:
            super().__init__(n_var=len(lower), n_obj=len(bench.objective_names), xl=lower, xu=upper, vtype=int)

        def _evaluate(self, x, out, *args, **kwargs) -> None:
            out["F"] = evaluator(config_spaces.from_vectors(np.rint(x).astype(int), bench.space))

    return ArchProblem()


def _pymoo_operators() -> dict:
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.operators.sampling.rnd import IntegerRandomSampling

    return {"sampling": IntegerRandomSampling(),
            "crossover": SBX(prob=1.0, eta=3.0, vtype=float, repair=RoundingRepair()),
            "mutation": PM(prob=1.0, eta=3.0, vtype=float, repair=RoundingRepair()),
            "eliminate_duplicates": True}


def _run_pymoo(algorithm, evaluator: Evaluator, seed: int) -> None:
    from pymoo.optimize import minimize

    with contextlib.suppress(BudgetSpent):  # a generation asked past the budget: the run is over
        minimize(_pymoo_problem(evaluator), algorithm, ("n_eval", evaluator.budget), seed=seed, verbose=False)


def nsga2_pymoo(evaluator: Evaluator, seed: int) -> None:
    from pymoo.algorithms.moo.nsga2 import NSGA2

    _run_pymoo(NSGA2(pop_size=POPULATION, **_pymoo_operators()), evaluator, seed)


def smsemoa_pymoo(evaluator: Evaluator, seed: int) -> None:
    from pymoo.algorithms.moo.sms import SMSEMOA

    _run_pymoo(SMSEMOA(pop_size=POPULATION, **_pymoo_operators()), evaluator, seed)


#: method name -> function(evaluator, seed) that spends the evaluator's budget
METHODS: dict[str, Callable[[Evaluator, int], None]] = {
    "random": random_search,
    "motpe-optuna": motpe_optuna,
    "nsga2-optuna": nsga2_optuna,
    "nsga2-pymoo": nsga2_pymoo,
    "smsemoa-pymoo": smsemoa_pymoo,
}


def available_methods() -> dict[str, Callable[[Evaluator, int], None]]:
    """``METHODS`` plus syne-tune's where syne-tune imports (``syne_tune_methods``)."""
    from .syne_tune_methods import syne_tune_methods

    return {**METHODS, **syne_tune_methods()}


def check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """``methods`` as a tuple: non-empty, distinct, each available here (``ValueError`` names the allowed ones)."""
    allowed = available_methods()
    if isinstance(methods, str) or not methods:
        raise ValueError(f"methods: a non-empty list expected, got {methods!r}; allowed values: {sorted(allowed)}")
    for name in methods:
        if name not in allowed:
            raise ValueError(f"methods: unknown method {name!r}; allowed values: {sorted(allowed)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"methods: each name once, got {list(methods)}")
    return tuple(methods)


def run_method(name: str, bench: Benchmark, budget: int, seed: int) -> tuple[Evaluator, float]:
    """Run method ``name`` with ``budget`` evaluations and ``seed`` (the benchmark's noise reseeded with it too);
    returns the evaluator (its ``records``) and the wall seconds of the whole run."""
    method = available_methods()[check_methods([name])[0]]
    bench.reseed(seed)
    evaluator = Evaluator(bench, budget)
    start = time.perf_counter()
    method(evaluator, seed)
    wall = time.perf_counter() - start
    if evaluator.remaining > 0:
        log.warning("%s (seed %d) stopped after %d of %d evaluations", name, seed, len(evaluator.records), budget)
    return evaluator, wall
