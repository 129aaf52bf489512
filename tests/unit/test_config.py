"""The config table equals the official one, and impossible configs are refused."""

from __future__ import annotations

import pytest

from pe_port.config import (
    MODEL_NAMES,
    PE_TEXT_CONFIG,
    PE_VISION_CONFIG,
    ConfigError,
    custom_config,
    custom_text_config,
    get_config,
    text_config,
)

# name: (image, patch, width, layers, heads, mlp width, output dim, LayerScale, cls, pool, ln_post)
OFFICIAL = {
    "PE-Core-G14-448": (448, 14, 1536, 50, 16, 8960, 1280, None, False, "attn", True),
    "PE-Core-L14-336": (336, 14, 1024, 24, 16, 4096, 1024, None, True, "attn", True),
    "PE-Core-B16-224": (224, 16, 768, 12, 12, 3072, 1024, None, True, "attn", True),
    "PE-Core-S16-384": (384, 16, 384, 12, 6, 1536, 512, None, True, "attn", True),
    "PE-Core-T16-384": (384, 16, 192, 12, 3, 768, 512, None, True, "attn", True),
    "PE-Lang-G14-448": (448, 14, 1536, 47, 16, 8960, None, 0.1, False, "none", False),
    "PE-Lang-G14-448-Tiling": (448, 14, 1536, 47, 16, 8960, None, 0.1, False, "none", False),
    "PE-Lang-L14-448": (448, 14, 1024, 23, 16, 4096, None, 0.1, True, "none", False),
    "PE-Lang-L14-448-Tiling": (448, 14, 1024, 23, 16, 4096, None, 0.1, True, "none", False),
    "PE-Spatial-G14-448": (448, 14, 1536, 50, 16, 8960, None, 0.1, False, "none", False),
    "PE-Spatial-L14-448": (448, 14, 1024, 24, 16, 4096, None, None, True, "none", False),
    "PE-Spatial-B16-512": (512, 16, 768, 12, 12, 3072, None, None, True, "none", False),
    "PE-Spatial-S16-512": (512, 16, 384, 12, 6, 1536, None, None, True, "none", False),
    "PE-Spatial-T16-512": (512, 16, 192, 12, 3, 768, None, None, True, "none", False),
}


def test_the_table_holds_exactly_the_fourteen_official_names():
    assert set(MODEL_NAMES) == set(OFFICIAL)
    assert len(MODEL_NAMES) == 14


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_config_equals_official_values(name):
    cfg = get_config(name)
    got = (cfg.image_size, cfg.patch_size, cfg.width, cfg.layers, cfg.heads, cfg.mlp_width,
           cfg.output_dim, cfg.ls_init_value, cfg.use_cls_token, cfg.pool_type, cfg.use_ln_post)
    assert got == OFFICIAL[name]
    # Shared by every official tower.
    assert (cfg.use_ln_pre, cfg.use_abs_posemb, cfg.use_rope2d) == (True, True, True)
    assert cfg.attn_pooler_heads == 8 and cfg.drop_path == 0.0


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="PE-Core-T16-384"):
        get_config("PE-Core-X99")


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(width=30, heads=4), "not divisible by heads"),
        (dict(pool_type="max"), "pool_type"),
        (dict(width=36, heads=3, attn_pooler_heads=8), "attn_pooler_heads"),
        (dict(image_size=30), "not a multiple of patch_size"),
        (dict(layers=0), "layers must be a positive integer"),
        (dict(patch_size=-8), "patch_size must be a positive integer"),
        (dict(mlp_ratio=0.0), "empty MLP"),
        (dict(output_dim=0), "output_dim"),
    ],
)
def test_impossible_configs_are_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        custom_config(**fields)


def test_configs_are_immutable_so_the_table_cannot_drift():
    with pytest.raises(AttributeError):
        PE_VISION_CONFIG["PE-Core-T16-384"].width = 1  # type: ignore[misc]


# The official `PE_TEXT_CONFIG`: (context, width, heads, layers, output dim); mlp ratio 4 and
# 49408 ids for all.
OFFICIAL_TEXT = {
    "PE-Core-G14-448": (72, 1280, 20, 24, 1280),
    "PE-Core-L14-336": (32, 1024, 16, 24, 1024),
    "PE-Core-B16-224": (32, 1024, 16, 24, 1024),
    "PE-Core-S16-384": (32, 512, 8, 12, 512),
    "PE-Core-T16-384": (32, 512, 8, 12, 512),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_TEXT))
def test_text_config_equals_official_values(name):
    cfg = text_config(name)
    assert (cfg.context_length, cfg.width, cfg.heads, cfg.layers, cfg.output_dim) == \
        OFFICIAL_TEXT[name]
    assert (cfg.mlp_ratio, cfg.vocab_size) == (4.0, 49408)
    # The text embedding meets the image embedding: the same output dim as the vision tower.
    assert cfg.output_dim == get_config(name).output_dim


def test_only_the_core_models_have_a_text_config():
    assert set(PE_TEXT_CONFIG) == set(OFFICIAL_TEXT)


@pytest.mark.parametrize("name", ["PE-Spatial-B16-512", "PE-Lang-L14-448-Tiling"])
def test_text_config_of_a_vision_only_model_names_it(name):
    with pytest.raises(ConfigError, match=f"{name} has no text tower; only PE-Core models"):
        text_config(name)


def test_text_config_of_an_unknown_name_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown model.*PE-Core-T16-384"):
        text_config("PE-Core-X99")


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(width=30, heads=4), "not divisible by heads"),
        (dict(context_length=0), "context_length=0"),
        (dict(vocab_size=2.5), "vocab_size=2.5"),
        (dict(mlp_ratio=0.01), "empty MLP"),
    ],
)
def test_impossible_text_configs_are_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        custom_text_config(**fields)
