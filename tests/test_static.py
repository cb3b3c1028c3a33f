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
