"""Generation: weight-sharing supernet, training, corpus, profilers, resumable runs and the release build.

Importing this package is light; most submodules need the ``generation`` extra (torch). The search spaces live in
the torch-free core, ``hwgpt_bench.search_spaces``.
"""
