"""Generation: search spaces, weight-sharing supernet, training, profilers, resumable runs and the release build.

Importing this package is light; submodules other than ``search_spaces`` need the ``generation`` extra (torch).
"""
