"""The fuzz suite: hypothesis profiles (see profiles.py) and the engine's policy generator."""

from __future__ import annotations

import sys
from pathlib import Path

# tests/engine/policygen.py generates valid policies; the engine tests import it by its bare name.
_ENGINE_TESTS = str(Path(__file__).resolve().parents[1] / "engine")
if _ENGINE_TESTS not in sys.path:
    sys.path.append(_ENGINE_TESTS)
