"""Default locations of the node agent (kept apart so the CLI can show them without loading the agent)."""

from pathlib import Path

DEFAULT_SOCKET = Path("/run/telltale/agent.sock")
DEFAULT_STATE_DIR = Path("/var/lib/telltale/agent")
