"""Location of the compiled shim shipped inside the package."""

from __future__ import annotations

from pathlib import Path

SHIM_NAME = "libtelltale_shim.so"


def shim_path() -> Path:
    """Return the path of the installed shim library.

    Raises FileNotFoundError when the package was installed without building the shim.
    """
    path = Path(__file__).with_name(SHIM_NAME)
    if not path.is_file():
        raise FileNotFoundError(
            f"telltale shim not found at {path}: reinstall the package (pip install .) to build it"
        )
    return path
