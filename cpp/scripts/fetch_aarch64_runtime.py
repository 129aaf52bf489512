"""Fetch the aarch64 TVM runtime and tvm-ffi that pe_infer's cross build links against.

pip downloads the aarch64 wheels of the very versions of `apache-tvm` and `apache-tvm-ffi`
installed in this Python (an artifact runs only under the runtime of the TVM that compiled it)
into `DEST/wheels`, and unpacks what the C++ build needs (the two shared libraries, tvm-ffi's
headers, the versions) into `DEST/packages`, the folder CMake's `PE_TVM_PACKAGES` names:

    python cpp/scripts/fetch_aarch64_runtime.py build/aarch64
    cmake -S cpp -B build/cpp-aarch64 -DPE_TVM_PACKAGES=build/aarch64/packages \\
          -DCMAKE_TOOLCHAIN_FILE=cpp/cmake/aarch64-linux-gnu.cmake

Nothing is fetched again when `DEST/packages` holds those versions. Exit status 3 when pip
cannot fetch the wheels (offline, no aarch64 wheel of that version), so tests can skip.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# The aarch64 wheels of both packages are tagged manylinux_2_28 (glibc 2.28 or newer).
PLATFORM = "manylinux_2_28_aarch64"
PACKAGES = ("apache-tvm", "apache-tvm-ffi")
STAMP = "versions.json"
FETCH_FAILED = 3


def wanted_member(name: str) -> bool:
    """The files of the wheels the C++ build uses: libraries, tvm-ffi's headers, metadata."""
    return (name in ("tvm/lib/libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so")
            or name.startswith("tvm_ffi/include/")
            or (".dist-info/" in name and name.endswith("/METADATA")))


def installed_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in PACKAGES}


def download(versions: dict[str, str], wheels: Path) -> list[Path]:
    """The aarch64 wheels of `versions` in `wheels`, downloaded unless already there."""
    wheels.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--only-binary=:all:", "--platform", PLATFORM, "-d", str(wheels),
               *(f"{name}=={version}" for name, version in versions.items())]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"fetch_aarch64_runtime: pip could not fetch the {PLATFORM} wheels of "
              f"{versions}: {last}", file=sys.stderr)
        sys.exit(FETCH_FAILED)
    found = []
    for name, version in versions.items():
        stem = f"{name.replace('-', '_')}-{version}-"
        found += [wheel for wheel in wheels.glob(f"{stem}*.whl") if "aarch64" in wheel.name][:1]
    return found


def unpack(wheels: list[Path], packages: Path, versions: dict[str, str]) -> None:
    """Unpack the wanted files into `packages`, replacing it whole (never half-written)."""
    packages.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".packages.", dir=packages.parent))
    try:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(staging, [n for n in archive.namelist() if wanted_member(n)])
        (staging / STAMP).write_text(json.dumps(versions))
        if packages.exists():
            shutil.rmtree(packages)
        staging.rename(packages)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="folder for wheels/ and packages/")
    dest = parser.parse_args(argv).dest.absolute()
    versions = installed_versions()
    packages = dest / "packages"
    try:
        if json.loads((packages / STAMP).read_text()) == versions:
            print(packages)
            return 0
    except (OSError, ValueError):
        pass
    wheels = download(versions, dest / "wheels")
    if len(wheels) != len(versions):
        print(f"fetch_aarch64_runtime: pip left no aarch64 wheel of {versions} in "
              f"{dest / 'wheels'}", file=sys.stderr)
        return FETCH_FAILED
    unpack(wheels, packages, versions)
    print(packages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
