"""Compiling the benchmarks' small C programs with the system's gcc."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent


class BuildError(RuntimeError):
    """gcc is missing or the program did not compile; the message carries gcc's output."""


def compile_program(source: str, out_dir: Path) -> Path:
    """Compile `bench/<source>` with -O2 into `out_dir`; returns the executable's path."""
    gcc = shutil.which("gcc")
    if gcc is None:
        raise BuildError("gcc not found: the benchmark needs it to build its C program")
    out = out_dir / Path(source).stem
    result = subprocess.run(
        [gcc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(HERE / source)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise BuildError(f"gcc failed on {source}:\n{result.stderr}")
    return out
