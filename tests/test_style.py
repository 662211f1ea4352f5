"""The code style the project keeps (pyproject's ``[tool.ruff]``, 120 columns): ruff's pycodestyle errors and
warnings and pyflakes (``E``, ``W``, ``F``) over every Python file of the repository, kernels and bench included."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("ruff") is None,
                    reason="ruff is not installed (scripts/install.sh installs it)")
def test_ruff_finds_nothing():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "E,F,W", str(ROOT)],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
