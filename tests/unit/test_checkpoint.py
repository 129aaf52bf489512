"""Official checkpoint files in every wrapping load; bad ones fail with a message that names why."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pe_port.build import export_tower
from pe_port.checkpoint import (
    CheckpointError,
    cached_checkpoint,
    download_checkpoint,
    read_vision_weights,
)
from pe_port.config import get_config
from pe_port.errors import WeightError
from pe_port.runtime import check_weights
from tests.conftest import SMALL_MODEL, official_state_dict


def text_tower_keys() -> dict[str, torch.Tensor]:
    return {"transformer.resblocks.0.attn.in_proj_weight": torch.ones(6, 2),
            "token_embedding.weight": torch.ones(4, 2), "logit_scale": torch.ones(())}


WRAPPINGS = {
    "raw": lambda sd: sd,
    "state_dict": lambda sd: {"state_dict": sd, "epoch": 3},
    "weights": lambda sd: {"weights": sd},
    "module-prefix": lambda sd: {f"module.{k}": v for k, v in sd.items()},
    "clip-visual": lambda sd: {**{f"visual.{k}": v for k, v in sd.items()}, **text_tower_keys()},
    "clip-module-visual": lambda sd: {"state_dict": {f"module.visual.{k}": v
                                                     for k, v in sd.items()}},
}


@pytest.mark.parametrize("wrapping", sorted(WRAPPINGS))
def test_every_official_wrapping_gives_the_vision_weights(wrapping, tmp_path, t16_state_dict):
    path = tmp_path / "ckpt.pt"
    torch.save(WRAPPINGS[wrapping](t16_state_dict), path)
    weights = read_vision_weights(path)
    assert set(weights) == set(t16_state_dict)
    for key, value in t16_state_dict.items():
        np.testing.assert_array_equal(weights[key], value.numpy())


def test_safetensors_with_the_same_keys_load(tmp_path, t16_state_dict):
    path = tmp_path / "ckpt.safetensors"
    save_file({k: v.contiguous() for k, v in t16_state_dict.items()}, str(path))
    assert set(read_vision_weights(path)) == set(t16_state_dict)


def test_pickles_that_run_code_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(1), "payload": object()}, path)
    with pytest.raises(CheckpointError, match="corrupt|not a weights file"):
        read_vision_weights(path)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_damaged_files_are_reported(damage, tmp_path, t16_checkpoint):
    path = tmp_path / f"{damage}.pt"
    data = t16_checkpoint.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not a checkpoint" * 9,
                      "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=str(path)):
        read_vision_weights(path)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        read_vision_weights(tmp_path / "nope.pt")


def expected_params(name: str):
    return export_tower(get_config(name), "float32")[1]


def test_a_t16_file_for_s16_names_the_wrong_shapes(t16_state_dict):
    weights = {k: v.numpy() for k, v in t16_state_dict.items()}
    with pytest.raises(WeightError, match=r"conv1.weight has shape \(192, 3, 16, 16\)"):
        check_weights(expected_params("PE-Core-S16-384"), weights)


def test_missing_and_unknown_keys_are_named(t16_state_dict):
    weights = {k: v.numpy() for k, v in t16_state_dict.items() if k != "proj"}
    weights["transformer.resblocks.99.ls_1.gamma"] = np.ones(192, np.float32)
    with pytest.raises(WeightError, match="missing keys: proj.*unexpected keys: "
                                          r"transformer\.resblocks\.99\.ls_1\.gamma"):
        check_weights(expected_params(SMALL_MODEL), weights)


def put_in_hub_cache(cache_root, name: str, payload: bytes) -> None:
    """Lay a file out as huggingface_hub's cache does, so offline lookups find it."""
    repo = cache_root / f"models--facebook--{name}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / f"{name}.pt").write_bytes(payload)


def test_hub_download_is_served_from_a_local_cache(isolated_caches, t16_checkpoint):
    name = "PE-Spatial-T16-512"
    assert cached_checkpoint(name) is None
    put_in_hub_cache(isolated_caches / "hub", name, b"bytes of the official file")
    assert cached_checkpoint(name) is not None
    path = download_checkpoint(name)  # HF_HUB_OFFLINE=1: resolves from the cache only
    assert open(path, "rb").read() == b"bytes of the official file"


def test_offline_without_cache_says_what_to_do():
    with pytest.raises(CheckpointError, match="not in the hub cache.*--checkpoint"):
        download_checkpoint("PE-Lang-L14-448-Tiling")


def test_official_state_dict_helper_matches_reference_keys():
    keys = set(official_state_dict(SMALL_MODEL))
    assert keys == {name for name, _ in expected_params(SMALL_MODEL)}


def test_non_finite_weights_are_refused_at_load_naming_the_tensor(tmp_path, t16_state_dict):
    """Issue 12, defect 8: NaN weights gave an all-NaN embedding with exit 0."""
    import pe_port
    from pe_port.errors import CheckpointError

    name = "transformer.resblocks.3.mlp.c_fc.bias"
    state = dict(t16_state_dict)
    state[name] = state[name].clone()
    state[name][7] = float("inf")
    path = tmp_path / "inf.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=f"weights hold NaN or Inf: {name}$"):
        pe_port.load(SMALL_MODEL, checkpoint=path, progress=None)  # refused before a compile
