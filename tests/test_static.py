"""Static checks run by the test command (hence CI): mypy over the package, so a wrong import or a call with
the wrong types cannot land."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_mypy_finds_no_error_in_the_package():
    """The files and settings are `[tool.mypy]` in pyproject.toml."""
    run = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-5000:] + run.stderr[-3000:]
    assert "Success: no issues found" in run.stdout


@pytest.mark.slow
def test_every_module_imports_as_part_of_the_one_package_and_nothing_under_a_top_level_name():
    """`pipeline`, `models` and `flows` are folders of the repository, not import names: a module imported as
    both `pipeline.x` and `accrete.pipeline.x` would exist twice (two `AccreteError` classes, two caches)."""
    probe = ("import importlib, pkgutil, sys, accrete\n"
             "for info in pkgutil.walk_packages(accrete.__path__, 'accrete.'):\n"
             "    importlib.import_module(info.name)\n"
             "print(len([m for m in sys.modules if m.startswith('accrete.')]))\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pipeline', 'models', 'flows')))\n")
    run = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    count, stray = run.stdout.strip().splitlines()[-2:]
    assert int(count) >= 30 and stray == "[]", run.stdout
