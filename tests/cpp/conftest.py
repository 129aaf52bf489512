"""Build `cpp/` once per session, from a clean folder, and export PE-Core-T16-384 for it: from a
vision-only checkpoint (`t16_artifact`) and from a CLIP checkpoint with the text tower
(`clip_artifact`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SMALL_MODEL
from tests.conftest import T16_VARIANT as VARIANT  # compiled into the test artifact

CPP_DIR = Path(__file__).resolve().parents[2] / "cpp"


def _missing_tools() -> list[str]:
    missing = [] if shutil.which("cmake") else ["cmake"]
    if not any(shutil.which(cxx) for cxx in (os.environ.get("CXX", "c++"), "c++", "g++")):
        missing.append("a C++ compiler (c++ / g++)")
    return missing


@pytest.fixture(scope="session")
def cpp_build(tmp_path_factory) -> Path:
    """`cpp/` configured and built in an empty folder; skips only without cmake or a compiler.
    `PE_CPP_BUILD` names a build to use instead (`make fuzz`: the sanitizer build)."""
    if os.environ.get("PE_CPP_BUILD"):
        return Path(os.environ["PE_CPP_BUILD"]).resolve()
    missing = _missing_tools()
    if missing:
        pytest.skip(f"the C++ runner needs {' and '.join(missing)} (`make cpp-deps` installs "
                    "them on Debian/Ubuntu)")
    build = tmp_path_factory.mktemp("cpp-build")
    assert not any(build.iterdir())
    jobs = str(max(1, os.cpu_count() or 1))
    for command in (
        ["cmake", "-S", str(CPP_DIR), "-B", str(build), f"-DPE_PYTHON={sys.executable}",
         "-DCMAKE_BUILD_TYPE=Release"],
        ["cmake", "--build", str(build), "-j", jobs],
    ):
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, (
            f"{' '.join(command)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}")
    return build


@pytest.fixture(scope="session")
def pe_infer(cpp_build) -> Path:
    return cpp_build / "pe_infer"


@pytest.fixture(scope="session")
def t16_encoder(t16_checkpoint):
    import pe_port

    return pe_port.load(SMALL_MODEL, checkpoint=t16_checkpoint, progress=None)


@pytest.fixture(scope="session")
def t16_artifact(t16_encoder, tmp_path_factory) -> Path:
    """PE-Core-T16-384 with seeded random weights, with one extra forward_features variant."""
    out = tmp_path_factory.mktemp("export") / "t16"
    return t16_encoder.export(out, feature_variants=[VARIANT], progress=None)


@pytest.fixture(scope="session")
def clip_checkpoint(tmp_path_factory) -> Path:
    """PE-Core-T16-384 as a CLIP checkpoint: both towers and the logit scale, random weights
    (every bias and embedding too), the seed tests/unit/test_text_api.py uses."""
    import torch

    import reference
    from pe_port.config import get_config, text_config

    clip = reference.CLIP(get_config(SMALL_MODEL).as_kwargs(),
                          text_config(SMALL_MODEL).as_kwargs())
    path = tmp_path_factory.mktemp("clip") / f"{SMALL_MODEL}-clip.pt"
    torch.save(reference.randomize_(clip, seed=7).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def clip_encoder(clip_checkpoint):
    import pe_port

    return pe_port.load(SMALL_MODEL, checkpoint=clip_checkpoint, progress=None)


@pytest.fixture(scope="session")
def clip_artifact(clip_encoder, tmp_path_factory) -> Path:
    """The CLIP export: the vision files, the text tower and the tokenizer's files."""
    return clip_encoder.export(tmp_path_factory.mktemp("export") / "clip", progress=None)


def run_pe_infer(binary: Path, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True,
                          env=None if env is None else {**os.environ, **env}, timeout=600)
