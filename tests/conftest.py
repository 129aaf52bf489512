"""Session fixtures: an isolated compile cache and hub cache, and official-format checkpoints."""

from __future__ import annotations

import os

import pytest
import torch

import reference
from reference.random_weights import randomize_

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
