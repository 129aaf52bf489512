"""For every official config the Relax parameters are the reference's state dict, key for key.

The big towers are only exported (no compile) and the reference is built on the meta device, so
this needs neither their memory nor their compile time.
"""

from __future__ import annotations

import pytest
import torch

import reference
from pe_port.build import export_tower
from pe_port.config import MODEL_NAMES, custom_config, get_config


def reference_shapes(cfg) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        ref = reference.VisionTransformer(**cfg.as_kwargs())
    return {k: tuple(v.shape) for k, v in ref.state_dict().items()}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_relax_parameters_equal_reference_state_dict(name):
    cfg = get_config(name)
    _, params = export_tower(cfg, "float32")
    assert dict(params) == reference_shapes(cfg)
    assert len(params) == len(dict(params)), "duplicate parameter names"


@pytest.mark.parametrize(
    "fields",
    [dict(use_cls_token=False), dict(ls_init_value=0.1), dict(pool_type="none", output_dim=None),
     dict(use_ln_pre=False, use_ln_post=False), dict(use_abs_posemb=False)],
)
def test_optional_parameters_exist_exactly_when_the_config_asks(fields):
    cfg = custom_config(**fields)
    _, params = export_tower(cfg, "float32")
    assert dict(params) == reference_shapes(cfg)


def test_block_keys_follow_the_official_names():
    _, params = export_tower(get_config("PE-Lang-L14-448"), "float32")
    names = dict(params)
    for key in ("conv1.weight", "class_embedding", "positional_embedding", "ln_pre.weight",
                "transformer.resblocks.0.attn.in_proj_weight",
                "transformer.resblocks.0.attn.out_proj.bias",
                "transformer.resblocks.22.ls_2.gamma", "transformer.resblocks.0.mlp.c_fc.weight"):
        assert key in names, key
    assert names["positional_embedding"] == (1 + 32 * 32, 1024)
