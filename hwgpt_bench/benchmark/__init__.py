"""The benchmark interface: query architectures on a device and simulate multi-objective search.

* ``interface.Benchmark``: one front door (surrogate or table mode, noise-free or sampled answers, exact objectives);
* ``space``: a search space as ConfigSpace / optuna / syne-tune / pymoo domains, and back to ``ArchConfig`` exactly;
* ``noise``: one plausible measurement drawn from a surrogate's nested conformal intervals;
* ``table``: the measured architectures of a release, raw repeats per metric;
* ``pareto``: Pareto fronts, hypervolume and IGD+ from moocore, with a stated normalisation;
* ``methods``: search methods of pymoo, optuna and syne-tune, wrapped; ``simulate``: methods x seeds, resumable.

It sits above the surrogates' runtime and the loaders (numpy, onnxruntime, polars) and below the CLI; the optimisers
and moocore come with the ``search`` extra. Nothing is imported here, so ``options`` stays free to import.
"""
