"""PE-Core's CLIP side through the API: `encode_text`, `zero_shot` and `encode_video` of a
`pe_port.load`ed model against the reference CLIP, one official-format checkpoint holding both
towers with random weights (every bias, embedding and the logit scale random).

The vision library is the suite's PE-Core-T16-384 one (the cache key holds no weights); the text
tower is the one library this file compiles. Tolerance: 1e-4 relative per model output in fp32
(the issue's bound: 12 blocks of fp32 roundoff, measured ~1e-6); the probabilities compare the
same way, through the softmax.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pe_port
import reference
from pe_port.config import get_config, text_config
from pe_port.errors import CheckpointError, InputError
from pe_port.tokenizer import find_vocab
from reference.tokenizer import ReferenceTokenizer
from tests.conftest import SMALL_MODEL
from tests.helpers import random_images, rel_error

TOLERANCE = 1e-4
CONTEXT = text_config(SMALL_MODEL).context_length
# Lengths from 2 ids (the empty text) to past the context (cut, with a warning), html
# entities, punctuation, digits, non-ASCII letters.
TEXTS = ["a photo of a dog", "", "A CAT &amp; a dog!!", "the number 42 , isn't it",
         "héllo wörld", "word " * 40]


@pytest.fixture(scope="module")
def clip_reference():
    clip = reference.CLIP(get_config(SMALL_MODEL).as_kwargs(),
                          text_config(SMALL_MODEL).as_kwargs())
    return reference.randomize_(clip, seed=7).eval()


@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory, clip_reference):
    """As the official files are: under "state_dict", keys with DDP's `module.` prefix."""
    path = tmp_path_factory.mktemp("clip") / f"{SMALL_MODEL}-clip.pt"
    state = {f"module.{k}": v for k, v in clip_reference.state_dict().items()}
    torch.save({"state_dict": state}, path)
    return path


@pytest.fixture(scope="module")
def encoder(clip_checkpoint):
    return pe_port.load(SMALL_MODEL, checkpoint=clip_checkpoint, progress=None)


@pytest.fixture(scope="module")
def reference_ids():
    return lambda texts: torch.tensor(ReferenceTokenizer(str(find_vocab()))(texts, CONTEXT))


def test_encode_text_matches_the_reference(encoder, clip_reference, reference_ids):
    with pytest.warns(UserWarning, match="text 5 .* truncated as the original does"):
        got = encoder.encode_text(TEXTS, normalize=True)
    with torch.no_grad():
        expected = clip_reference.encode_text(reference_ids(TEXTS), normalize=True).numpy()
    assert rel_error(got, expected) <= TOLERANCE
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning for texts that fit
        single = encoder.encode_text("a photo of a dog")
    with torch.no_grad():
        unnormalised = clip_reference.encode_text(reference_ids(TEXTS[:1])).numpy()
    assert rel_error(single, unnormalised) <= TOLERANCE


def test_zero_shot_probabilities_match_the_reference(encoder, clip_reference, reference_ids):
    labels, templates = ["cat", "dog", "red car"], ["a photo of a {}.", "a {}"]
    pixels = random_images(2, 32, 32, seed=3)
    got = encoder.zero_shot(pixels, labels, templates)
    with torch.no_grad():
        image = clip_reference.encode_image(torch.from_numpy(pixels), normalize=True)
        prompts = [t.replace("{}", label) for label in labels for t in templates]
        text = clip_reference.encode_text(reference_ids(prompts), normalize=True)
        classes = F.normalize(text.reshape(len(labels), len(templates), -1).mean(1), dim=-1)
        expected = (clip_reference.logit_scale.exp() * image @ classes.T).softmax(-1).numpy()
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-6)
    assert rel_error(got, expected) <= TOLERANCE
    assert encoder.logit_scale == pytest.approx(clip_reference.logit_scale.exp().item(), 1e-6)


def test_encode_video_is_the_mean_of_its_frames(encoder, clip_reference):
    frames = random_images(4, 32, 48, seed=5).reshape(2, 2, 3, 32, 48)
    for normalize in (False, True):
        with torch.no_grad():
            expected = clip_reference.encode_video(torch.from_numpy(frames), normalize).numpy()
        assert rel_error(encoder.encode_video(frames, normalize), expected) <= TOLERANCE


def test_text_errors_are_one_clear_line(encoder, t16_checkpoint):
    with pytest.raises(InputError, match="labels must be a non-empty list"):
        encoder.zero_shot(random_images(1, 32, 32, seed=0), [])
    with pytest.raises(InputError, match="no texts given"):
        encoder.encode_text([])
    with pytest.raises(InputError, match="the context of PE-Core-T16-384 is 32"):
        encoder.text(np.ones((1, 33), np.int64), encoder.device)
    vision_only = pe_port.load(SMALL_MODEL, checkpoint=t16_checkpoint, progress=None)
    with pytest.raises(CheckpointError, match="holds no text tower"):
        vision_only.encode_text("a dog")


# ---- the command line ------------------------------------------------------------------------

def run_cli(capsys, *argv) -> tuple[int, str, str]:
    from pe_port.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(11)
    for name in ("a.png", "b.jpg"):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(folder / name)
    return folder


def test_cli_encode_text_equals_the_api(encoder, clip_checkpoint, capsys, tmp_path):
    out = tmp_path / "t.npy"
    code, _, err = run_cli(capsys, "encode-text", SMALL_MODEL, "--checkpoint", clip_checkpoint,
                           "--text", "a dog", "--text", TEXTS[-1], "--output", out)
    assert code == 0, err
    assert err.count("pe-port: warning: text 1 ") == 1  # the long text, in one line
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = encoder.encode_text(["a dog", TEXTS[-1]])
    np.testing.assert_array_equal(np.load(out), expected)


def test_cli_classify_prints_the_api_probabilities(encoder, clip_checkpoint, photos, capsys):
    import json

    labels = ["cat", "dog", "car"]
    code, out, err = run_cli(capsys, "classify", SMALL_MODEL, "--checkpoint", clip_checkpoint,
                             "--labels", ",".join(labels), "--input", photos, "--top-k", "2",
                             "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    expected = encoder.zero_shot(sorted(photos.iterdir()), labels)
    assert [row["image"] for row in rows] == [str(p) for p in sorted(photos.iterdir())]
    for row, probabilities in zip(rows, expected, strict=True):
        best = np.argsort(-probabilities, kind="stable")[:2]
        assert row["labels"] == [labels[i] for i in best]
        np.testing.assert_allclose(row["probabilities"], probabilities[best], atol=1e-6)
    code, out, _ = run_cli(capsys, "classify", SMALL_MODEL, "--checkpoint", clip_checkpoint,
                           "--labels", "cat,dog", "--input", photos)
    assert code == 0 and out.count("%") == 4  # a readable table: 2 labels x 2 images


def test_cli_search_ranks_by_the_text(encoder, clip_checkpoint, photos, capsys):
    code, out, err = run_cli(capsys, "search", SMALL_MODEL, "--checkpoint", clip_checkpoint,
                             "--query", "a red car", "--input", photos)
    assert code == 0, err
    files = sorted(photos.iterdir())
    scores = (pe_port.runtime.normalized(encoder.encode_images(files))
              @ encoder.encode_text("a red car", normalize=True)[0])
    assert [line.split()[1] for line in out.splitlines()] == [
        str(files[i]) for i in np.argsort(-scores, kind="stable")]


@pytest.mark.parametrize("argv, message", [
    (["classify", "PE-Spatial-B16-512", "--labels", "a", "--input", "x.png"],
     "PE-Spatial-B16-512 has no text tower"),
    (["classify", SMALL_MODEL, "--labels", ",", "--input", "x.png"],
     "give at least one non-empty label"),
    (["encode-text", SMALL_MODEL, "--output", "t.npy"], "give at least one non-empty text"),
    (["encode-text", SMALL_MODEL, "--text-file", "missing.txt", "--output", "t.npy"],
     "text file missing.txt does not exist"),
    (["search", SMALL_MODEL, "--query", " ", "--input", "x.png"],
     "give at least one non-empty query"),
])
def test_cli_text_input_errors_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and err.startswith("pe-port: error: ") and message in err, err
    assert err.count("\n") == 1 and not list(tmp_path.iterdir())


def test_cli_vision_only_checkpoint_is_a_clear_error(t16_checkpoint, capsys, tmp_path):
    out = tmp_path / "t.npy"
    code, _, err = run_cli(capsys, "encode-text", SMALL_MODEL, "--checkpoint", t16_checkpoint,
                           "--text", "a dog", "--output", out)
    assert code == 2 and "holds no text tower" in err and not out.exists()


def test_converted_checkpoint_keeps_the_text_tower(encoder, clip_checkpoint, capsys, tmp_path):
    out = tmp_path / "clip.safetensors"
    code, _, err = run_cli(capsys, "convert", clip_checkpoint, out)
    assert code == 0, err
    converted = pe_port.load(SMALL_MODEL, checkpoint=out, progress=None)
    np.testing.assert_array_equal(converted.encode_text("a dog"), encoder.encode_text("a dog"))
