"""The reading order is the import order: no module imports one that comes later, not even lazily.

    backend -> tensor -> autograd -> primitives -> functional -> nn -> optim -> models -> application

The engine's side modules sit between them where their imports put them: random (the generators)
threads (CPU worker threads) and kernels (GPU code, which autograd dispatches to) on the backend, serialization (files) on the tensor,
transforms (vjp, jvp, hvp) on autograd,
gradcheck and viz (drawing) on nn, distributed (MPI) beside optim. `tinygrad_tx/__init__.py` gathers the engine, so only models
and the application may import the package itself. `tinygrad_tx/__main__.py` is the entry point
that starts the application.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The layers in reading order. A module may import its own layer and the layers before it.
# A name ending in ".*" covers every module of that subpackage.
LAYERS = [
    ("backend", ["tinygrad_tx.backend"]),
    ("threads", ["tinygrad_tx.threads"]),
    ("random", ["tinygrad_tx.random"]),
    ("kernels", ["tinygrad_tx.kernels"]),
    ("tensor", ["tinygrad_tx.tensor"]),
    ("serialization", ["tinygrad_tx.serialization"]),
    ("autograd", ["tinygrad_tx.autograd"]),
    ("transforms", ["tinygrad_tx.transforms"]),
    ("primitives", ["tinygrad_tx.primitives"]),
    ("functional", ["tinygrad_tx.functional"]),
    ("nn", ["tinygrad_tx.nn"]),
    ("gradcheck", ["tinygrad_tx.gradcheck"]),
    ("optim", ["tinygrad_tx.optim"]),
    ("distributed", ["tinygrad_tx.distributed"]),
    ("viz", ["tinygrad_tx.viz", "tinygrad_tx.viz.*"]),
    ("the engine package", ["tinygrad_tx"]),
    ("models", ["tinygrad_tx.models", "tinygrad_tx.models.*"]),
    ("application", ["tinygrad_tx.app", "tinygrad_tx.app.*"]),
    ("entry point", ["tinygrad_tx.__main__"]),
]


def module_files() -> dict[str, Path]:
    """Every module of the installed package, by its dotted name (models/ installs as tinygrad_tx.models)."""
    found = {}
    for folder, package in ((ROOT / "tinygrad_tx", "tinygrad_tx"), (ROOT / "models", "tinygrad_tx.models")):
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


MODULES = module_files()


def layer_of(module: str) -> int | None:
    for rank, (_, names) in enumerate(LAYERS):
        for name in names:
            if module == name or (name.endswith(".*") and module.startswith(name[:-1])):
                return rank
    return None


def is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def imported_modules(module: str, tree: ast.AST):
    """(line, dotted name) of every project module this file imports, at top level or inside a function.

    `from X import name` counts as importing X.name when that is a module, else X. Calls to
    importlib.import_module("...") and __import__("...") with a literal name count too.
    """
    package = module if is_package(module) else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module
            for alias in node.names:
                sub = f"{origin}.{alias.name}"
                yield node.lineno, sub if sub in MODULES else origin
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")):
            yield node.lineno, node.args[0].value


def violations() -> list[str]:
    problems = []
    for module, path in MODULES.items():
        where = path.relative_to(ROOT)
        rank = layer_of(module)
        if rank is None:
            problems.append(f"{where}: {module} has no place in LAYERS of tests/test_layering.py; "
                            f"put it in the reading order")
            continue
        for line, target in imported_modules(module, ast.parse(path.read_text(), str(path))):
            if target == "models" or target.startswith("models."):
                problems.append(f"{where}:{line}: imports {target!r}; the models install as tinygrad_tx.models")
                continue
            if target not in MODULES:
                continue                                    # the standard library or a third-party package
            target_rank = layer_of(target)
            if target_rank is not None and target_rank > rank:
                problems.append(f"{where}:{line}: {module} ({LAYERS[rank][0]}) imports {target} "
                                f"({LAYERS[target_rank][0]}), which comes later in the reading order")
    return problems


def test_no_import_runs_against_the_reading_order():
    problems = violations()
    assert not problems, "imports against the reading order:\n" + "\n".join(problems)


def test_the_map_covers_the_engine_models_and_application():
    assert {"tinygrad_tx.tensor", "tinygrad_tx.autograd", "tinygrad_tx.primitives",
            "tinygrad_tx.models.transformer", "tinygrad_tx.app.cli"} <= set(MODULES)
    # the parser sees what it must: a lazy import inside a function, and a relative import
    tree = ast.parse("def f():\n    from ..app import cli\n    from .. import nn\n")
    assert list(imported_modules("tinygrad_tx.viz.graph", tree)) == [(2, "tinygrad_tx.app.cli"),
                                                                     (3, "tinygrad_tx.nn")]


@pytest.mark.parametrize("statement", ["import tinygrad_tx", "import tinygrad_tx.tensor",
                                       "import tinygrad_tx.viz"])
def test_importing_the_engine_loads_no_model_and_no_application(statement):
    code = (f"{statement}\nimport sys\n"
            "print(sorted(m for m in sys.modules if m.startswith(('tinygrad_tx.models', 'tinygrad_tx.app', "
            "'models'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT / "tests")
    assert out.stdout.strip() == "[]"
