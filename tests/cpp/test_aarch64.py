"""pe_infer on 64-bit Arm, checked here under emulation: PE-Core-T16-384 (random weights)
exported with `pe-port export --target aarch64` (the NEON kernels, linked by the cross
toolchain), pe_infer cross-built against the aarch64 wheels' TVM runtime, run under qemu-user,
gives the outputs of the Python API on this x86 machine.

Skips, saying why, only where the cross toolchain, the arm64 libraries, qemu-user (all from
`make cross-deps`) or the aarch64 wheels (pip) cannot be had. Emulated speed means nothing;
correctness is what this proves.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pe_port.cli import main as pe_port_cli
from tests.cpp.conftest import CPP_DIR, SMALL_MODEL
from tests.helpers import random_images, rel_error

REPO = CPP_DIR.parent
# Debian multiarch: the arm64 loader and libraries, beside this machine's own.
ARM64_LIBRARIES = [Path("/lib/ld-linux-aarch64.so.1")] + [
    Path("/usr/lib/aarch64-linux-gnu") / name
    for name in ("libpng.so", "libjpeg.so", "libz.so", "libstdc++.so.6")]
FETCH_FAILED = 3  # fetch_aarch64_runtime.py: pip could not get the wheels
# The same graph and weights; NEON sums in 4-lane vectors and contracts its own FMAs where x86
# uses 8 or 16 lanes, so float32 rounding differs (measured: 4e-7 relative).
ARM_TOLERANCE = 1e-5
ELF_MACHINE_AARCH64 = 183


def qemu() -> str | None:
    return shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")


@pytest.fixture(scope="module")
def cross_tools() -> None:
    missing = [] if shutil.which("cmake") else ["cmake"]
    missing += [] if shutil.which("aarch64-linux-gnu-g++") else ["aarch64-linux-gnu-g++"]
    missing += [] if qemu() else ["qemu-aarch64 (qemu-user)"]
    missing += [str(path) for path in ARM64_LIBRARIES if not path.exists()]
    if missing:
        pytest.skip(f"the aarch64 build needs {', '.join(missing)} (`make cross-deps` installs "
                    "them on Debian as root)")


@pytest.fixture(scope="module")
def aarch64_packages(cross_tools) -> Path:
    """The aarch64 TVM runtime and tvm-ffi, unpacked from pip's wheels into build/aarch64."""
    done = subprocess.run([sys.executable, str(CPP_DIR / "scripts" / "fetch_aarch64_runtime.py"),
                           str(REPO / "build" / "aarch64")], capture_output=True, text=True)
    if done.returncode == FETCH_FAILED:
        pytest.skip(done.stderr.strip())
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip())


@pytest.fixture(scope="module")
def arm_pe_infer(aarch64_packages, tmp_path_factory) -> Path:
    """pe_infer alone (no tools, no ctest), cross-built in an empty folder."""
    build = tmp_path_factory.mktemp("cpp-aarch64")
    toolchain = CPP_DIR / "cmake" / "aarch64-linux-gnu.cmake"
    jobs = str(max(1, os.cpu_count() or 1))
    for command in (
        ["cmake", "-S", str(CPP_DIR), "-B", str(build), f"-DCMAKE_TOOLCHAIN_FILE={toolchain}",
         f"-DPE_TVM_PACKAGES={aarch64_packages}", "-DCMAKE_BUILD_TYPE=Release",
         "-DBUILD_TESTING=OFF"],
        ["cmake", "--build", str(build), "-j", jobs, "--target", "pe_infer"],
    ):
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, (
            f"{' '.join(command)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return build / "pe_infer"


@pytest.fixture(scope="module")
def arm_artifact(cross_tools, t16_checkpoint, tmp_path_factory) -> Path:
    """The artifact as a user makes it: `pe-port export --target aarch64`."""
    out = tmp_path_factory.mktemp("export-aarch64") / "t16"
    assert pe_port_cli(["export", SMALL_MODEL, "--checkpoint", str(t16_checkpoint),
                        "--target", "aarch64", "-o", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def pixels(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("npy-aarch64") / "pixels.npy"
    np.save(path, random_images(2, 64, 48, seed=5))
    return path


def run_on_arm(binary: Path, *args) -> subprocess.CompletedProcess:
    """`binary` under qemu-user with the arm64 loader and libraries of this machine's multiarch
    folders; its default thread pool (one thread per core) runs the parallel kernels."""
    command = [qemu(), str(binary), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def test_the_exported_library_is_aarch64_code(arm_artifact):
    header = (arm_artifact / "model.so").read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == \
        ELF_MACHINE_AARCH64


def test_forward_on_aarch64_matches_x86(arm_pe_infer, arm_artifact, t16_encoder, pixels,
                                        tmp_path):
    out = tmp_path / "emb.npy"
    done = run_on_arm(arm_pe_infer, arm_artifact, pixels, out)
    assert done.returncode == 0, done.stderr
    expected = t16_encoder(np.load(pixels))
    assert np.load(out).shape == expected.shape == (2, 512)
    assert rel_error(np.load(out), expected) <= ARM_TOLERANCE


def test_features_on_aarch64_match_x86(arm_pe_infer, arm_artifact, t16_encoder, pixels,
                                       tmp_path):
    """Every token, not only the pooled embedding: the attention and MLP outputs as they are."""
    out = tmp_path / "tok.npy"
    done = run_on_arm(arm_pe_infer, arm_artifact, pixels, out, "--features")
    assert done.returncode == 0, done.stderr
    expected = t16_encoder.forward_features(np.load(pixels))
    assert np.load(out).shape == expected.shape == (2, 13, 192)  # cls + 4x3 patches
    assert rel_error(np.load(out), expected) <= ARM_TOLERANCE
