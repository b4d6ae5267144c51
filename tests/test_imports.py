"""The torch-free core and the lazy command line: reading tables, searching and the light commands
import no torch (it alone costs about 3 s on the 2-core machine); package names still resolve."""

import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["search_space", "latency_tables", "search", "predictors", "hwnas"]


def _heavy_modules_after(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; return which heavy modules it imported."""
    probe = code + "\nimport sys; print(' '.join(m for m in ('torch', 'sklearn', 'scipy', 'matplotlib') if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_search_and_latency_tables_import_without_torch():
    assert _heavy_modules_after("import search, latency_tables") == []


def test_querying_a_table_and_searching_need_no_torch():
    """The torch-free core in use, not just imported: a shipped table predicts, objectives and
    the search entry points load (Optuna, numpy only)."""
    code = """
from latency_tables import LatencyTable, TableError
from search import Trials, device_fronts, parse_budget, run_search, table_latency, score_batch
from search_space import Arch, SearchSpace, UserError
from search_space.io import atomic_write_json
t = LatencyTable.load('cifar_cpu_ort_b1_fp32', check_machine=False)
assert t.predict(t.space.largest()) > t.predict(t.space.smallest()) > 0
"""
    assert _heavy_modules_after(code) == []


@pytest.mark.parametrize("argv", [["--help"], ["latency", "list"], ["latency", "show", "cifar_h200_cuda_b256_bf16"],
                                  ["space", "show"]], ids=" ".join)
def test_light_commands_need_no_torch(argv):
    code = f"""
import contextlib, io
from hwnas.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        rc = main({argv!r})
    except SystemExit as e:  # --help
        rc = e.code
assert rc == 0, rc
"""
    assert _heavy_modules_after(code) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_every_exported_name_resolves(package):
    """The lazy ``__init__`` maps each public name to the submodule that defines it."""
    mod = importlib.import_module(package)
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"{package}.{name}"
        assert name in dir(mod)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        getattr(mod, "nope")


def test_registry_complete_through_the_package():
    """Predictor kinds register on import; the package's PREDICTORS has every built-in kind."""
    from predictors import PREDICTORS

    assert {"mlp", "gbt", "gp", "blend"} <= set(PREDICTORS)


def _intra_imports(package: str) -> dict[str, set[str]]:
    """Module -> modules of the same package it imports (at any depth of the file)."""
    graph = {}
    for f in (ROOT / package).glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps.update([node.module] if node.module else [a.name for a in node.names])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(package + "."):
                deps.add(node.module.split(".")[1])
        graph[f.stem] = deps - {f.stem}
    return graph


def test_search_modules_import_no_cycle():
    graph = _intra_imports("search")
    seen, done = [], set()

    def visit(m):
        assert m not in seen, f"import cycle: {' -> '.join(seen[seen.index(m):] + [m])}"
        if m in done or m not in graph:
            return
        seen.append(m)
        for d in graph[m]:
            visit(d)
        seen.pop()
        done.add(m)

    for m in graph:
        visit(m)


def test_library_modules_do_not_import_the_command_line():
    """hwnas's library (the pipeline included) is what the commands parse their options into: no
    module outside hwnas/cli imports hwnas.cli (hwnas/__main__.py, the entry point, aside)."""
    offenders = []
    for f in sorted((ROOT / "hwnas").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{f.name}:{node.lineno} {n}" for n in names
                          if (n == "hwnas.cli" or n.startswith("hwnas.cli.")) and f.name != "__main__.py"]
    assert offenders == []
