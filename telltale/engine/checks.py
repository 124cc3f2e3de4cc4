"""The checks of the catalog's alert types: one small function per type.

The checks live in one module per category (``checks_process``, ``checks_network``,
``checks_files``, ``checks_libraries``, ``checks_node``) and register themselves, by alert type
id, in :data:`CHECKS` (checks of workload events) or :data:`NODE_CHECKS` (checks of host
state). Importing this module imports them all. What a check is and may do is described in
:mod:`telltale.engine.checkbase`.
"""

from __future__ import annotations

from telltale.engine import checks_files, checks_libraries, checks_network, checks_node, checks_process
from telltale.engine.checkbase import (
    CHECKS,
    NODE_CHECKS,
    Check,
    CheckFactory,
    Context,
    Hit,
    NodeCheck,
    NodeCheckFactory,
    resolve_program,
)

__all__ = [
    "CHECKS",
    "NODE_CHECKS",
    "Check",
    "CheckFactory",
    "Context",
    "Hit",
    "NodeCheck",
    "NodeCheckFactory",
    "resolve_program",
]

_MODULES = (
    checks_files,
    checks_libraries,
    checks_network,
    checks_node,
    checks_process,
)  # registered on import
