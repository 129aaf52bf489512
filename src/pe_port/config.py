"""The Perception Encoder configurations: one dataclass per tower, every official model by name.

Field names are the official ones (`PEConfig` and `PETextConfig` in Meta's
`core/vision_encoder/config.py`), so a config converts to the reference's constructor arguments
with `dataclasses.asdict`. Only the PE-Core models (CLIP models) have a text tower.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from pe_port.errors import ConfigError

POOL_TYPES = ("attn", "tok", "avg", "none")
# The activation dtypes a tower compiles for (matmuls accumulate in float32 in all of them).
DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class PEConfig:
    """Vision tower hyper-parameters, named as in the official PE code."""

    patch_size: int
    width: int
    layers: int
    heads: int
    mlp_ratio: float
    output_dim: int | None
    ls_init_value: float | None = None
    drop_path: float = 0.0
    image_size: int = 224
    use_abs_posemb: bool = True
    use_cls_token: bool = False
    use_rope2d: bool = True
    pool_type: str = "attn"
    attn_pooler_heads: int = 8
    use_ln_pre: bool = True
    use_ln_post: bool = True

    def __post_init__(self) -> None:
        self.validate()

    # Derived sizes, computed exactly as the official modules compute them.
    @property
    def mlp_width(self) -> int:
        return int(self.width * self.mlp_ratio)

    @property
    def head_dim(self) -> int:
        return self.width // self.heads

    @property
    def grid_size(self) -> int:
        """The pretrain grid side, for which `positional_embedding` is stored."""
        return self.image_size // self.patch_size

    @property
    def num_pos(self) -> int:
        return int(self.use_cls_token) + self.grid_size**2

    @property
    def use_layer_scale(self) -> bool:
        return self.ls_init_value is not None

    def validate(self) -> None:
        positive = ("patch_size", "width", "layers", "heads", "image_size", "attn_pooler_heads")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.width % self.heads:
            raise ConfigError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.pool_type not in POOL_TYPES:
            raise ConfigError(f"pool_type {self.pool_type!r} is not one of {POOL_TYPES}")
        if self.pool_type == "attn" and self.width % self.attn_pooler_heads:
            raise ConfigError(
                f"width {self.width} is not divisible by attn_pooler_heads "
                f"{self.attn_pooler_heads}"
            )
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.mlp_ratio <= 0 or self.mlp_width <= 0:
            raise ConfigError(f"mlp_ratio {self.mlp_ratio} gives an empty MLP")
        if self.output_dim is not None and self.output_dim <= 0:
            raise ConfigError(f"output_dim must be positive or None, got {self.output_dim}")

    def as_kwargs(self) -> dict:
        """The constructor arguments of the official (and reference) `VisionTransformer`."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def custom_config(**overrides) -> PEConfig:
    """A small config for tests: a 2-layer, width-32 tower at 32x32 pixels unless overridden."""
    small = dict(
        patch_size=8,
        width=32,
        layers=2,
        heads=2,
        mlp_ratio=4.0,
        output_dim=16,
        image_size=32,
        use_cls_token=True,
        attn_pooler_heads=8,
    )
    small.update(overrides)
    return PEConfig(**small)


def _core(image_size, patch_size, width, layers, heads, mlp_ratio, output_dim, cls):
    return PEConfig(
        image_size=image_size,
        patch_size=patch_size,
        width=width,
        layers=layers,
        heads=heads,
        mlp_ratio=mlp_ratio,
        pool_type="attn",
        output_dim=output_dim,
        use_cls_token=cls,
    )


def _dense(base: PEConfig, **changes) -> PEConfig:
    """Lang and Spatial towers: the Core tower without pooling, projection or ln_post."""
    return replace(base, pool_type="none", use_ln_post=False, output_dim=None, **changes)


_CORE_G = _core(448, 14, 1536, 50, 16, 8960 / 1536, 1280, cls=False)
_CORE_L = _core(336, 14, 1024, 24, 16, 4.0, 1024, cls=True)
_CORE_B = _core(224, 16, 768, 12, 12, 4.0, 1024, cls=True)
_CORE_S = _core(384, 16, 384, 12, 6, 4.0, 512, cls=True)
_CORE_T = _core(384, 16, 192, 12, 3, 4.0, 512, cls=True)

PE_VISION_CONFIG: dict[str, PEConfig] = {
    "PE-Core-G14-448": _CORE_G,
    "PE-Core-L14-336": _CORE_L,
    "PE-Core-B16-224": _CORE_B,
    "PE-Core-S16-384": _CORE_S,
    "PE-Core-T16-384": _CORE_T,
    "PE-Lang-G14-448": _dense(_CORE_G, image_size=448, ls_init_value=0.1, layers=47),
    "PE-Lang-L14-448": _dense(_CORE_L, image_size=448, ls_init_value=0.1, layers=23),
    "PE-Spatial-G14-448": _dense(_CORE_G, image_size=448, ls_init_value=0.1),
    "PE-Spatial-L14-448": _dense(_CORE_L, image_size=448),
    "PE-Spatial-B16-512": _dense(_CORE_B, image_size=512),
    "PE-Spatial-S16-512": _dense(_CORE_S, image_size=512),
    "PE-Spatial-T16-512": _dense(_CORE_T, image_size=512),
}
# The tiling checkpoints (stage 2 of PLM training) share their tower with the plain Lang ones.
PE_VISION_CONFIG["PE-Lang-G14-448-Tiling"] = PE_VISION_CONFIG["PE-Lang-G14-448"]
PE_VISION_CONFIG["PE-Lang-L14-448-Tiling"] = PE_VISION_CONFIG["PE-Lang-L14-448"]

MODEL_NAMES: tuple[str, ...] = tuple(PE_VISION_CONFIG)


def get_config(name: str) -> PEConfig:
    """The official config called `name`; an unknown name lists the valid ones."""
    try:
        return PE_VISION_CONFIG[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}"
        ) from None


@dataclass(frozen=True)
class PETextConfig:
    """Text tower hyper-parameters, named as in the official PE code."""

    context_length: int
    width: int
    heads: int
    layers: int
    output_dim: int
    mlp_ratio: float = 4.0
    vocab_size: int = 49408

    def __post_init__(self) -> None:
        sizes = ("context_length", "width", "heads", "layers", "output_dim", "vocab_size")
        bad = [f"{n}={getattr(self, n)!r}" for n in sizes
               if not isinstance(getattr(self, n), int) or getattr(self, n) <= 0]
        if bad:
            raise ConfigError(f"text config sizes must be positive integers: {', '.join(bad)}")
        if self.width % self.heads:
            raise ConfigError(f"width {self.width} is not divisible by heads {self.heads}")
        if int(self.width * self.mlp_ratio) <= 0:
            raise ConfigError(f"mlp_ratio {self.mlp_ratio} gives an empty MLP")

    def as_kwargs(self) -> dict:
        """The constructor arguments of the official (and reference) `TextTransformer`."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def custom_text_config(**overrides) -> PETextConfig:
    """A small text config for tests: 2 layers, width 32, 8 positions, a 64-id vocabulary."""
    small = dict(context_length=8, width=32, heads=2, layers=2, output_dim=16, vocab_size=64)
    small.update(overrides)
    return PETextConfig(**small)


_TEXT_S = PETextConfig(context_length=32, width=512, heads=8, layers=12, output_dim=512)
_TEXT_L = PETextConfig(context_length=32, width=1024, heads=16, layers=24, output_dim=1024)

PE_TEXT_CONFIG: dict[str, PETextConfig] = {
    "PE-Core-G14-448": PETextConfig(
        context_length=72, width=1280, heads=20, layers=24, output_dim=1280
    ),
    "PE-Core-L14-336": _TEXT_L,
    "PE-Core-B16-224": _TEXT_L,
    "PE-Core-S16-384": _TEXT_S,
    "PE-Core-T16-384": _TEXT_S,
}


def text_config(name: str) -> PETextConfig:
    """The official text config of model `name`; Lang, Spatial and unknown names are errors."""
    get_config(name)  # an unknown name lists the valid ones
    try:
        return PE_TEXT_CONFIG[name]
    except KeyError:
        raise ConfigError(
            f"{name} has no text tower; only PE-Core models do: {', '.join(PE_TEXT_CONFIG)}"
        ) from None
