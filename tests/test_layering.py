"""Imports point down the layers, never up: parsed with ``ast`` (imports inside functions included), nothing imported.

Layers, lowest first; a module may import its own layer and those listed for it:

* ``core``: ``hwgpt_bench.files``, ``hwgpt_bench.metrics``, ``hwgpt_bench.search_spaces``;
* ``loaders``: ``hwgpt_bench.loaders`` and its modules (core, loaders);
* ``surrogates runtime``: ``hwgpt_bench.surrogates_onnx`` (the package), ``.runtime``, ``.encoding`` and
  ``.recalibration`` (numpy + onnxruntime; core only);
* ``generation``: ``hwgpt_bench.generation.*`` (core, loaders; never surrogates_onnx);
* ``surrogates training``: the rest of ``hwgpt_bench.surrogates_onnx.*`` (core, loaders, surrogates; never generation);
* ``benchmark``: ``hwgpt_bench.benchmark.*`` (core, loaders, surrogates runtime; never generation or training);
* ``top``: ``hwgpt_bench`` (the package face), ``hwgpt_bench.cli``, ``hwgpt_bench.__main__`` (anything).

Besides: only ``hwgpt_bench.__main__`` imports ``hwgpt_bench.cli``; the package face imports its re-exports lazily
(no module-level import of our modules); below the top, ``from hwgpt_bench import __version__`` is the one name taken
from the package face. Every module must belong to a layer and every ``hwgpt_bench`` import must name a real module.
"""

from __future__ import annotations

import ast
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROOT = "hwgpt_bench"

CORE, LOADERS, RUNTIME, GENERATION, TRAINING, BENCHMARK, TOP = (
    "core", "loaders", "surrogates runtime", "generation", "surrogates training", "benchmark", "top")
# what each layer may import besides itself
ALLOWED: dict[str, set[str]] = {
    CORE: set(),
    LOADERS: {CORE},
    RUNTIME: {CORE},
    GENERATION: {CORE, LOADERS},
    TRAINING: {CORE, LOADERS, RUNTIME},
    BENCHMARK: {CORE, LOADERS, RUNTIME},
    TOP: {CORE, LOADERS, RUNTIME, GENERATION, TRAINING, BENCHMARK},
}
CLI = f"{ROOT}.cli"
CLI_IMPORTERS = {f"{ROOT}.__main__"}
FACE_NAMES_BELOW_TOP = {"__version__"}  # the names a lower layer may take from the package face


def layer_of(module: str) -> str | None:
    """The layer of a dotted module name of ours; None when no rule places it."""
    if module in (ROOT, CLI, f"{ROOT}.__main__"):
        return TOP
    if module in (f"{ROOT}.files", f"{ROOT}.metrics", f"{ROOT}.search_spaces", f"{ROOT}.panel"):
        return CORE
    if module == f"{ROOT}.loaders" or module.startswith(f"{ROOT}.loaders."):
        return LOADERS
    if module in (f"{ROOT}.surrogates_onnx", *(f"{ROOT}.surrogates_onnx.{m}" for m in ("runtime", "encoding",
                                                                                       "recalibration"))):
        return RUNTIME
    if module.startswith(f"{ROOT}.surrogates_onnx."):
        return TRAINING
    if module == f"{ROOT}.generation" or module.startswith(f"{ROOT}.generation."):
        return GENERATION
    if module == f"{ROOT}.benchmark" or module.startswith(f"{ROOT}.benchmark."):
        return BENCHMARK
    return None


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    line: int
    names: tuple[str, ...] = ()  # for ``from X import a, b`` where X itself is the target (not a submodule)
    module_level: bool = True  # executed at import time (not inside a function, not under TYPE_CHECKING)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _deferred(node: ast.AST, field: str) -> bool:
    """Whether ``node.field`` runs later than its surroundings: a function's body, a TYPE_CHECKING block."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
        return field == "body"  # decorators and defaults run when the function is defined
    return isinstance(node, ast.If) and field == "body" and _is_type_checking(node.test)


def _resolve_relative(importer: str, is_package: bool, level: int, module: str | None) -> str:
    parts = importer.split(".") if is_package else importer.split(".")[:-1]
    if level > 1:
        if level - 1 >= len(parts):
            raise ValueError(f"{importer}: relative import beyond the top-level package (level {level})")
        parts = parts[: len(parts) - (level - 1)]
    return ".".join([*parts, *([module] if module else [])])


def imports_of(source: str, importer: str, is_package: bool = False, known: set[str] | frozenset = frozenset(),
               filename: str = "<source>") -> list[Edge]:
    """Every import of one of our modules in ``source`` (module ``importer``), relative ones resolved.

    ``from X import y`` is an edge to ``X.y`` when that is a module in ``known``, else to ``X``. Constant-string
    ``importlib.import_module("...")`` calls count as imports too.
    """
    tree = ast.parse(source, filename=filename)
    edges: list[Edge] = []

    def ours(name: str) -> bool:
        return name == ROOT or name.startswith(ROOT + ".")

    def visit(node: ast.AST, module_level: bool) -> None:
        if isinstance(node, ast.Import):
            edges.extend(Edge(importer, a.name, node.lineno, module_level=module_level)
                         for a in node.names if ours(a.name))
        elif isinstance(node, ast.ImportFrom):
            base = (_resolve_relative(importer, is_package, node.level, node.module) if node.level
                    else node.module or "")
            if ours(base):
                plain = []
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in known:
                        edges.append(Edge(importer, sub, node.lineno, module_level=module_level))
                    else:
                        plain.append(alias.name)
                if plain:
                    edges.append(Edge(importer, base, node.lineno, tuple(plain), module_level))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and ours(node.args[0].value)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__")))):
            edges.append(Edge(importer, node.args[0].value, node.lineno, module_level=module_level))
        for field, value in ast.iter_fields(node):
            children = value if isinstance(value, list) else [value]
            for child in children:
                if not isinstance(child, ast.AST):
                    continue
                visit(child, module_level and not _deferred(node, field))

    visit(tree, True)
    return edges


def violations(edges: list[Edge], known: set[str] | frozenset | None = None) -> list[str]:
    """One message per broken rule, naming the importing module, the imported one and the rule."""
    out = []
    for e in edges:
        src, dst = layer_of(e.importer), layer_of(e.imported)
        where = f"{e.importer} (line {e.line}) imports {e.imported}"
        if known is not None and e.imported not in known:
            out.append(f"{where}: no such module of ours (rule: every hwgpt_bench import names a real module)")
            continue
        if src is None:
            out.append(f"{where}: {e.importer} is in no layer (rule: every module belongs to a layer; add it to "
                       f"layer_of in tests/test_layering.py)")
            continue
        if dst is None:
            out.append(f"{where}: {e.imported} is in no layer (rule: every module belongs to a layer)")
            continue
        if e.imported == CLI and e.importer not in CLI_IMPORTERS:
            out.append(f"{where}: rule: nothing imports {CLI} except {', '.join(sorted(CLI_IMPORTERS))}")
            continue
        if e.importer == ROOT and e.module_level:
            out.append(f"{where}: rule: the package face {ROOT} imports its re-exports lazily (inside __getattr__), "
                       f"never at module level")
            continue
        if e.imported == ROOT and src != TOP:
            extra = sorted(set(e.names) - FACE_NAMES_BELOW_TOP) if e.names else ["(the package itself)"]
            if extra:
                out.append(f"{where} ({', '.join(extra)}): rule: the {src} layer may not import from the package "
                           f"face {ROOT} (only {', '.join(sorted(FACE_NAMES_BELOW_TOP))}); import the home module")
            continue
        if dst != src and dst not in ALLOWED[src]:
            may = ", ".join([src, *sorted(ALLOWED[src])])
            out.append(f"{where}: upward import, {src} -> {dst} (rule: the {src} layer may import only {may})")
    return out


# ---- the package's modules --------------------------------------------------------------------------------------
def _package_dirs() -> dict[str, Path]:
    """Package name -> source folder for the top-level packages, from pyproject's ``package-dir``."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    dirs = config["tool"]["setuptools"]["package-dir"]
    return {pkg: REPO / folder for pkg, folder in dirs.items() if pkg.count(".") <= 1}


def our_modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is_package) for every .py file of the package."""
    modules: dict[str, tuple[Path, bool]] = {}
    for pkg, folder in _package_dirs().items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder)
            if any(part in ("node_modules", "__pycache__") or part.startswith(".") for part in rel.parts):
                continue
            parts = list(rel.with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            modules[".".join([pkg, *parts])] = (path, is_package)
    return modules


MODULES = our_modules()
KNOWN = frozenset(MODULES)


def all_edges() -> list[Edge]:
    edges = []
    for name, (path, is_package) in MODULES.items():
        edges += imports_of(path.read_text(encoding="utf-8"), name, is_package, KNOWN, str(path))
    return edges


EDGES = all_edges()

# Known breaks of the rules in the current code, with the reason: (importer, imported) -> reason. Each is xfail(strict),
# so fixing the import makes the test fail until its entry is removed here.
KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {}


def _current_violations() -> dict[tuple[str, str], list[str]]:
    found: dict[tuple[str, str], list[str]] = {}
    for e in EDGES:
        for message in violations([e], KNOWN):
            found.setdefault((e.importer, e.imported), []).append(message)
    return found


def test_the_walk_sees_every_layer():
    assert len(MODULES) > 40
    seen = {layer_of(m) for m in MODULES}
    assert seen >= {CORE, LOADERS, RUNTIME, GENERATION, TRAINING, BENCHMARK, TOP}
    assert {f"{ROOT}.search_spaces", f"{ROOT}.loaders.io", f"{ROOT}.surrogates_onnx.runtime",
            f"{ROOT}.generation.runs", f"{ROOT}.benchmark.interface", CLI} <= KNOWN
    assert len(EDGES) > 50
    # imports inside functions are seen (the CLI dispatches to its subcommands lazily)
    assert any(not e.module_level for e in EDGES if e.importer == CLI)


def test_every_module_is_in_a_layer():
    assert [m for m in MODULES if layer_of(m) is None] == []


def test_no_upward_imports():
    found = _current_violations()
    unexpected = [m for key, messages in sorted(found.items()) if key not in KNOWN_VIOLATIONS for m in messages]
    assert not unexpected, "import rules broken:\n" + "\n".join(unexpected)


KNOWN_VIOLATION_CASES = [pytest.param(key, id=f"{key[0]}->{key[1]}", marks=pytest.mark.xfail(strict=True, reason=why))
                         for key, why in KNOWN_VIOLATIONS.items()]
if KNOWN_VIOLATION_CASES:  # none at present

    @pytest.mark.parametrize("edge", KNOWN_VIOLATION_CASES)
    def test_known_violation_is_fixed(edge):
        """Fails (xfail) while the listed break is there; once fixed it passes, which strict xfail reports."""
        found = _current_violations()
        assert edge not in found, "\n".join(found[edge])


# ---- the checker itself catches planted breaks (so the tests above cannot pass vacuously) ------------------------
PLANTED = '''
from __future__ import annotations
from typing import TYPE_CHECKING
from hwgpt_bench.metrics import METRICS
from . import schema
from .join import tidy_join

if TYPE_CHECKING:
    from hwgpt_bench.surrogates_onnx.runtime import Surrogate

def later():
    from ..generation import runs
    import hwgpt_bench.cli
    import importlib
    return importlib.import_module("hwgpt_bench.surrogates_onnx.training")
'''


def test_relative_imports_resolve_and_function_bodies_are_walked():
    known = {"hwgpt_bench.loaders.schema", "hwgpt_bench.generation.runs", "hwgpt_bench.loaders.join"}
    edges = imports_of(PLANTED, "hwgpt_bench.loaders.fake", known=known)
    got = {(e.imported, e.module_level) for e in edges}
    assert got == {("hwgpt_bench.metrics", True), ("hwgpt_bench.loaders.schema", True),
                   ("hwgpt_bench.loaders.join", True), ("hwgpt_bench.surrogates_onnx.runtime", False),
                   ("hwgpt_bench.generation.runs", False), ("hwgpt_bench.cli", False),
                   ("hwgpt_bench.surrogates_onnx.training", False)}
    # inside a package's __init__, one dot is the package itself
    (edge,) = imports_of("from .runtime import Surrogate", "hwgpt_bench.surrogates_onnx", is_package=True)
    assert edge.imported == "hwgpt_bench.surrogates_onnx.runtime"
    (edge,) = imports_of("from .. import metrics", "hwgpt_bench.loaders.io", known={"hwgpt_bench.metrics"})
    assert edge.imported == "hwgpt_bench.metrics"


def test_checker_catches_planted_upward_imports():
    known = {"hwgpt_bench.loaders.schema", "hwgpt_bench.generation.runs", "hwgpt_bench.loaders.join"}
    messages = violations(imports_of(PLANTED, "hwgpt_bench.loaders.fake", known=known))
    assert len(messages) == 4, messages
    joined = "\n".join(messages)
    for imported, rule in [("hwgpt_bench.surrogates_onnx.runtime", "loaders -> surrogates runtime"),
                           ("hwgpt_bench.generation.runs", "loaders -> generation"),
                           ("hwgpt_bench.cli", "nothing imports hwgpt_bench.cli"),
                           ("hwgpt_bench.surrogates_onnx.training", "loaders -> surrogates training")]:
        assert "hwgpt_bench.loaders.fake (line" in joined
        assert any(imported in m and rule in m for m in messages), (imported, messages)


@pytest.mark.parametrize(("importer", "source", "needle"), [
    ("hwgpt_bench.search_spaces", "from hwgpt_bench.loaders.io import load_table", "core -> loaders"),
    ("hwgpt_bench.surrogates_onnx.runtime", "from hwgpt_bench.loaders import io", "surrogates runtime -> loaders"),
    ("hwgpt_bench.surrogates_onnx.runtime", "import hwgpt_bench.generation.cost", "surrogates runtime -> generation"),
    ("hwgpt_bench.surrogates_onnx", "from .training import fit", "surrogates runtime -> surrogates training"),
    ("hwgpt_bench.generation.cost", "def f():\n    from ..surrogates_onnx.runtime import Surrogate",
     "generation -> surrogates runtime"),
    ("hwgpt_bench.surrogates_onnx.training", "from hwgpt_bench.generation.runs import PartWriter",
     "surrogates training -> generation"),
    ("hwgpt_bench.benchmark.interface", "from hwgpt_bench.surrogates_onnx.training import Recipe",
     "benchmark -> surrogates training"),
    ("hwgpt_bench.benchmark.methods", "def f():\n    import hwgpt_bench.generation.model", "benchmark -> generation"),
    ("hwgpt_bench.surrogates_onnx.runtime", "from hwgpt_bench.benchmark.noise import draw",
     "surrogates runtime -> benchmark"),
    ("hwgpt_bench", "from hwgpt_bench.cli import main", "nothing imports hwgpt_bench.cli"),
    ("hwgpt_bench", "from hwgpt_bench.search_spaces import encode", "imports its re-exports lazily"),
    ("hwgpt_bench.loaders.io", "from hwgpt_bench import Surrogate", "may not import from the package face"),
    ("hwgpt_bench.generation.foo", "from hwgpt_bench.generation.nope import x", "no such module"),
])
def test_checker_names_importer_imported_and_rule(importer, source, needle):
    is_package = importer in ("hwgpt_bench", "hwgpt_bench.surrogates_onnx")
    known = set(KNOWN) | {importer}
    (message,) = violations(imports_of(source, importer, is_package, known), known)
    assert message.startswith(f"{importer} (line ")
    assert needle in message and "rule" in message


@pytest.mark.parametrize(("importer", "source"), [
    ("hwgpt_bench.__main__", "from hwgpt_bench.cli import main"),
    ("hwgpt_bench.generation.release", "from hwgpt_bench import __version__"),
    ("hwgpt_bench.surrogates_onnx.pipeline", "from hwgpt_bench.loaders.io import load_table"),
    ("hwgpt_bench.surrogates_onnx.pipeline", "from . import runtime"),
    ("hwgpt_bench", "def __getattr__(name):\n    from hwgpt_bench.loaders import io"),
    ("hwgpt_bench", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .surrogates_onnx import runtime"),
    ("hwgpt_bench.cli", "import hwgpt_bench.generation.train"),
    ("hwgpt_bench.benchmark.table", "def f():\n    from hwgpt_bench.loaders.io import load_table"),
    ("hwgpt_bench.benchmark.interface", "from hwgpt_bench.surrogates_onnx.runtime import Surrogate"),
    ("hwgpt_bench.cli", "from hwgpt_bench.benchmark.simulate import run_search"),
])
def test_checker_allows_downward_imports(importer, source):
    is_package = importer == "hwgpt_bench"
    assert violations(imports_of(source, importer, is_package, KNOWN), KNOWN) == []
