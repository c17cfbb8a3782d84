"""The import-linter contract (pyproject.toml) allows bootstrap to import the simulators, because
it sits above them; what it cannot see is that those imports are lazy. This keeps them so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_production_wiring_loads_no_simulator_until_simulators_are_switched_on() -> None:
    # A fresh interpreter: this one has long since imported the simulators for other tests.
    probe = (
        "import sys, services.bootstrap; "
        "print(sorted(m for m in sys.modules if m.startswith('services.sim')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()

    assert loaded == "[]"
