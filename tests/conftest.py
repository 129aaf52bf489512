"""Session fixtures: an isolated compile cache and hub cache, and official-format checkpoints."""

from __future__ import annotations

import os
import time

import pytest
import torch

import reference
from pe_port.threads import configure_tvm_threads
from reference.random_weights import randomize_

# Before any test runs a kernel: the tests that build components run them without `load`, and
# a pool with TVM's default idle spin made processes on a busy machine take minutes to exit.
configure_tvm_threads()

SMALL_MODEL = "PE-Core-T16-384"
# The one forward_features variant (layer_idx, norm, strip_cls) the tests of SMALL_MODEL use,
# as -2 or as 10 (the same block of 12): with the plain library, two compiles for the suite.
T16_VARIANT = (-2, True, True)


@pytest.fixture(scope="session", autouse=True)
def isolated_caches(tmp_path_factory):
    """No test reads or writes the user's caches, and none touches the network."""
    root = tmp_path_factory.mktemp("caches")
    os.environ["PE_PORT_CACHE"] = str(root / "pe_port")
    os.environ["HF_HUB_CACHE"] = str(root / "hub")
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield root


def official_state_dict(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    from pe_port.config import get_config

    tower = reference.VisionTransformer(**get_config(name).as_kwargs())
    return randomize_(tower, seed).state_dict()


@pytest.fixture(scope="session")
def t16_state_dict():
    return official_state_dict(SMALL_MODEL)


@pytest.fixture(scope="session")
def t16_checkpoint(tmp_path_factory, t16_state_dict):
    """A raw official-format `.pt` of PE-Core-T16-384 with seeded random weights."""
    path = tmp_path_factory.mktemp("ckpt") / f"{SMALL_MODEL}.pt"
    torch.save(t16_state_dict, path)
    return path


# ---- two workers (`make test`: pytest-xdist) ---------------------------------------------------
# Tests that share compiled libraries (or the C++ build) run on one worker, which compiles them
# once; any other test goes wherever a worker is free. Keyed by node id prefix: pytest 9 ignores
# the node id suffix that xdist's own `xdist_group` marker relies on.
SHARED_WORK = {
    # Its own cross build and aarch64 library: beside the t16 group, not after it on one worker.
    "tests/cpp/test_aarch64.py": "aarch64",
    "tests/cpp/": "t16",  # the C++ build and the PE-Core-T16-384 libraries
    "tests/unit/test_api_cli.py": "t16",
    "tests/unit/test_torch_free.py": "t16",
    "tests/unit/test_cache.py": "t16",
    "tests/unit/test_text_api.py": "t16",
    "tests/unit/test_encode_folder_cli.py": "t16",
    "tests/unit/test_ray.py": "t16",  # one Ray start; T16 and the tiny tower
    "tests/unit/test_streaming.py": "tiny",  # tests/tiny_model.py's library
    "tests/parity/test_models.py::test_forward": "families",  # the family libraries
    "tests/parity/test_models.py::test_every_parameter": "families",
    "tests/parity/test_models.py::test_every_forward_features": "families",
    "tests/parity/test_rope.py": "rope",
}


def shared_work(nodeid: str) -> str:
    """The scope a test is scheduled in: its group in SHARED_WORK, else the test alone."""
    return next((group for prefix, group in SHARED_WORK.items() if nodeid.startswith(prefix)),
                nodeid)


@pytest.hookimpl(optionalhook=True)  # an xdist hook: `-p no:xdist` runs without it
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class SharedWorkScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return shared_work(nodeid)

    return SharedWorkScheduling(config, log)


# ---- progress with times ----------------------------------------------------------------------
# A run cut off at CI's time limit prints no `--durations` table: each phase slower than this is
# reported as it ends, with the time since the session began, so a cut-off log still tells
# where the time went.
SLOW_PHASE_S = 30.0
_session = {}


def pytest_sessionstart(session):
    _session.update(start=time.monotonic(), config=session.config)


def pytest_runtest_logreport(report):
    if report.duration < SLOW_PHASE_S or "config" not in _session:
        return
    reporter = _session["config"].pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        elapsed = time.monotonic() - _session["start"]
        reporter.write_line(f"[{elapsed / 60:5.1f} min] {report.duration:4.0f} s "
                            f"{report.when} {report.nodeid}")
