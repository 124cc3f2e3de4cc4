"""Build hooks: generate the telltale.v1 protobuf/gRPC code and compile the shim; declare the
agent's native record decoder (telltale._native._records, from native/recordsmodule.c).

Both are produced in the source tree (telltale/v1/ and telltale/_native/) before the normal
build_py step, so a regular install copies them and an editable install finds them in place.
They are ignored by git: the build is the only producer.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from setuptools import Distribution, Extension, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
PROTO_ROOT = ROOT / "proto"
GENERATED = ROOT / "telltale" / "v1"
SHIM_OUT = ROOT / "telltale" / "_native" / "libtelltale_shim.so"


def generate_protos() -> None:
    """Run protoc (from grpcio-tools) over proto/telltale/v1/*.proto."""
    from grpc_tools import protoc  # build-time dependency (pyproject build-system.requires)

    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.glob("telltale/v1/*.proto"))
    if not sources:
        raise SystemExit("no .proto files under proto/telltale/v1")
    GENERATED.mkdir(parents=True, exist_ok=True)
    for stale in GENERATED.glob("*_pb2*.py*"):  # a renamed or removed .proto leaves no module behind
        stale.unlink()
    include = Path(protoc.__file__).resolve().parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        f"--mypy_out={ROOT}",
        f"--mypy_grpc_out={ROOT}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed on proto/telltale/v1")
    init = GENERATED / "__init__.py"
    init.write_text('"""Generated telltale.v1 protobuf and gRPC code (do not edit)."""\n')
    (GENERATED / "py.typed").write_text("")


def build_shim() -> None:
    """Compile the LD_PRELOAD shim with the flags of shim/Makefile."""
    SHIM_OUT.parent.mkdir(parents=True, exist_ok=True)
    cmd = ["make", "-s", "-C", str(ROOT / "shim"), f"OUT={SHIM_OUT}"]
    try:
        subprocess.run(cmd, check=True)
    except FileNotFoundError as exc:
        raise SystemExit("building the shim needs make and gcc (apt-get install build-essential)") from exc
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"building the shim failed: {' '.join(cmd)}") from exc


class BuildPy(build_py):
    """build_py that first produces the generated code and the native shim."""

    def run(self) -> None:
        generate_protos()
        build_shim()
        super().run()


RECORDS_EXT = Extension(
    "telltale._native._records",
    sources=["native/recordsmodule.c"],
    extra_compile_args=["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-fno-strict-aliasing"],
)


class BinaryDistribution(Distribution):
    """The wheel carries a compiled shim, so it is platform specific."""

    def has_ext_modules(self) -> bool:
        return True


if __name__ == "__main__":
    # egg_info needs every listed package directory to exist before build_py generates its content.
    GENERATED.mkdir(parents=True, exist_ok=True)
    setup(cmdclass={"build_py": BuildPy}, distclass=BinaryDistribution, ext_modules=[RECORDS_EXT])
