"""The reference text tower and CLIP (pure PyTorch): the official state-dict keys and shapes,
the causal mask, pooling at the end-of-text token, and what CLIP's methods return."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import reference
from pe_port.config import (
    PE_TEXT_CONFIG,
    PETextConfig,
    custom_config,
    custom_text_config,
    get_config,
)
from reference.random_weights import randomize_

END_ID = 63  # the largest id of the small config's 64-id vocabulary, as 49407 is of the real one
SMALL_TEXT = custom_text_config()  # 8 positions, width 32, 2 layers, output 16
# Masked keys get a softmax weight of exactly 0, so earlier rows move only by summation order.
CAUSAL_TOL = 1e-12


def official_text_keys(cfg: PETextConfig) -> dict[str, tuple[int, ...]]:
    """The state dict of the official `TextTransformer` (PE_FACTS.md): key -> shape."""
    width, hidden = cfg.width, int(cfg.width * cfg.mlp_ratio)
    keys = {
        "token_embedding.weight": (cfg.vocab_size, width),
        "positional_embedding": (cfg.context_length, width),
        "ln_final.weight": (width,), "ln_final.bias": (width,),
        "text_projection": (width, cfg.output_dim),
    }
    for i in range(cfg.layers):
        block = {
            "ln_1.weight": (width,), "ln_1.bias": (width,),
            "ln_2.weight": (width,), "ln_2.bias": (width,),
            "attn.in_proj_weight": (3 * width, width), "attn.in_proj_bias": (3 * width,),
            "attn.out_proj.weight": (width, width), "attn.out_proj.bias": (width,),
            "mlp.c_fc.weight": (hidden, width), "mlp.c_fc.bias": (hidden,),
            "mlp.c_proj.weight": (width, hidden), "mlp.c_proj.bias": (width,),
        }
        keys |= {f"transformer.resblocks.{i}.{k}": shape for k, shape in block.items()}
    return keys


def shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


@pytest.mark.parametrize("name", ["PE-Core-T16-384", "PE-Core-B16-224", "PE-Core-G14-448"])
def test_text_tower_state_dict_equals_the_official_keys_and_shapes(name):
    with torch.device("meta"):  # official sizes without allocating them
        tower = reference.TextTransformer(**PE_TEXT_CONFIG[name].as_kwargs())
    assert shapes(tower) == official_text_keys(PE_TEXT_CONFIG[name])


@pytest.mark.parametrize("name", ["PE-Core-T16-384", "PE-Core-B16-224"])
def test_clip_state_dict_holds_text_at_the_root_vision_under_visual_and_a_scalar_scale(name):
    with torch.device("meta"):
        clip = reference.CLIP(get_config(name).as_kwargs(), PE_TEXT_CONFIG[name].as_kwargs())
        vision = reference.VisionTransformer(**get_config(name).as_kwargs())
    want = official_text_keys(PE_TEXT_CONFIG[name])
    want |= {f"visual.{k}": shape for k, shape in shapes(vision).items()}
    want["logit_scale"] = ()
    assert shapes(clip) == want  # the causal mask is a buffer outside the state dict


def small_tower(seed: int) -> reference.TextTransformer:
    return randomize_(reference.TextTransformer(**SMALL_TEXT.as_kwargs()), seed).double().eval()


def token_states(tower: reference.TextTransformer, ids: torch.Tensor) -> torch.Tensor:
    """Every position's output of `ln_final`, `[batch, seq, width]`, read by a hook."""
    seen = []
    handle = tower.ln_final.register_forward_hook(lambda module, args, out: seen.append(out))
    with torch.no_grad():
        tower(ids)
    handle.remove()
    return seen[0]


def ids_strategy(min_len: int = 1):
    """A batch of id rows of one length (ids below the end id), and a seed."""
    return st.integers(1, 3).flatmap(lambda batch: st.integers(min_len, SMALL_TEXT.context_length)
                                     .flatmap(lambda seq: st.lists(
                                         st.lists(st.integers(1, END_ID - 1), min_size=seq,
                                                  max_size=seq),
                                         min_size=batch, max_size=batch)))


@settings(max_examples=25, deadline=None)
@given(rows=ids_strategy(min_len=2), data=st.data(), seed=st.integers(0, 2**16))
def test_changing_a_later_token_leaves_every_earlier_position_unchanged(rows, data, seed):
    tower = small_tower(seed)
    ids = torch.tensor(rows)
    later = data.draw(st.integers(1, ids.shape[1] - 1), label="changed position")
    changed = ids.clone()
    changed[:, later] = (changed[:, later] % (END_ID - 1)) + 1  # another id, still below the end
    before, after = token_states(tower, ids), token_states(tower, changed)
    torch.testing.assert_close(after[:, :later], before[:, :later], rtol=0, atol=CAUSAL_TOL)
    assert (after[:, later] - before[:, later]).abs().max() > 1e-3  # the changed row does move


@settings(max_examples=25, deadline=None)
@given(rows=ids_strategy(), seed=st.integers(0, 2**16), data=st.data())
def test_pooled_embedding_is_the_end_token_row_whatever_follows_it(rows, seed, data):
    """Padding after the end id, or any ids there, leaves the pooled embedding as it is."""
    tower = small_tower(seed)
    seq = len(rows[0])
    text = torch.tensor(rows)[:, : seq - 1]
    text = torch.cat([text, torch.full((len(rows), 1), END_ID)], dim=1)  # ... tokens, end
    free = SMALL_TEXT.context_length - seq
    tail = data.draw(st.lists(st.integers(0, END_ID - 1), min_size=free, max_size=free),
                     label="after the end id")
    padded = torch.cat([text, torch.zeros(len(rows), free, dtype=torch.long)], dim=1)
    junk = torch.cat([text, torch.tensor([tail] * len(rows), dtype=torch.long)], dim=1)
    with torch.no_grad():
        want = tower(text)
        for longer in (padded, junk):
            torch.testing.assert_close(tower(longer), want, rtol=0, atol=CAUSAL_TOL)
        want_row = token_states(tower, text)[:, -1] @ tower.text_projection
    torch.testing.assert_close(want, want_row, rtol=0, atol=0)


def test_pooling_follows_the_end_id_not_the_last_position():
    tower = small_tower(seed=3)
    ids = torch.tensor([[5, 9, END_ID, 0, 0], [7, END_ID, 0, 0, 0]])
    with torch.no_grad():
        states = token_states(tower, ids)
        pooled = tower(ids)
    torch.testing.assert_close(pooled[0], states[0, 2] @ tower.text_projection, rtol=0, atol=0)
    torch.testing.assert_close(pooled[1], states[1, 1] @ tower.text_projection, rtol=0, atol=0)


@pytest.fixture(scope="module")
def small_clip():
    clip = reference.CLIP(custom_config().as_kwargs(), SMALL_TEXT.as_kwargs())
    return randomize_(clip, seed=11).double().eval()


def test_clip_forward_gives_normalised_embeddings_and_the_exp_scale(small_clip):
    image = torch.randn(2, 3, 32, 32, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0))
    text = torch.tensor([[2, 5, END_ID, 0, 0, 0, 0, 0], [4, END_ID, 0, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        image_emb, text_emb, scale = small_clip(image, text)
        want_image = F.normalize(small_clip.visual(image), dim=-1)
        want_text = F.normalize(reference.TextTransformer.forward(small_clip, text), dim=-1)
    torch.testing.assert_close(image_emb, want_image, rtol=0, atol=0)
    torch.testing.assert_close(text_emb, want_text, rtol=0, atol=0)
    assert scale.item() == pytest.approx(small_clip.logit_scale.exp().item(), rel=1e-15)
    assert small_clip.logit_scale.item() != 0  # random, not the init log(1/0.07)
    assert small_clip(image=image)[1] is None and small_clip(text=text)[0] is None


@pytest.mark.parametrize("normalize", [False, True])
def test_video_embedding_is_the_mean_of_its_frame_embeddings(small_clip, normalize):
    """Each video's frames are its own (b, t order kept); the mean is not renormalised."""
    video = torch.randn(2, 3, 3, 32, 32, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = small_clip.encode_video(video, normalize=normalize)
        want = torch.stack([small_clip.encode_image(frames, normalize=normalize).mean(dim=0)
                            for frames in video])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)  # batched vs per-video sums
