"""The miniature's data generator and scorer: known truth passes, everything else fails."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from resadapter_rt.miniature.scorer import label_regions, score
from resadapter_rt.miniature.shapes import (BACKGROUNDS, COLOURS, caption, draw_spec, parse_caption, render,
                                            sample, vocabulary)

SIZES = [(128, 128), (64, 64), (384, 128), (128, 384), (97, 203), (256, 256), (8, 8)]


def test_vocabulary_and_caption_grammar():
    assert len(vocabulary()) == 6 * 3 * 2
    assert caption("magenta", "triangle", "black") == "a magenta triangle on a black background"
    assert parse_caption("a cyan square on a white background") == ("cyan", "square", "white")
    with pytest.raises(ValueError, match=r"'a purple circle on a white background' is not of the form"):
        parse_caption("a purple circle on a white background")


@pytest.mark.parametrize("width,height", SIZES)
def test_one_shape_of_the_right_size_fully_inside(width, height):
    shorter = min(width, height)
    for index in range(40):
        image, spec = sample(3, index, width, height)
        assert image.size == (width, height)
        left, top, right, bottom = spec.box
        assert 0 <= left and 0 <= top and right <= width and bottom <= height
        assert right - left == bottom - top
        assert 0.4 * shorter <= right - left <= 0.6 * shorter
        colours = {tuple(c) for c in np.asarray(image).reshape(-1, 3).tolist()}
        assert colours == {BACKGROUNDS[spec.background], COLOURS[spec.colour]}  # flat fill, no other colour
        assert spec.caption == caption(spec.colour, spec.shape, spec.background)


def test_deterministic_from_seed_and_index():
    a, spec_a = sample(0, 5, 200, 120)
    b, spec_b = sample(0, 5, 200, 120)
    assert spec_a == spec_b and a.tobytes() == b.tobytes()
    others = {draw_spec(0, i, 200, 120) for i in range(50)} | {draw_spec(1, 5, 200, 120)}
    assert len(others) > 45
    words = {(s.colour, s.shape, s.background) for s in (draw_spec(0, i, 128, 128) for i in range(2000))}
    assert len(words) == 36  # the whole vocabulary is drawn


def test_too_small_is_refused():
    with pytest.raises(ValueError, match="4x64 is too small for a shape; use sides of at least 8 px"):
        draw_spec(0, 0, 4, 64)


@pytest.mark.parametrize("width,height", SIZES[:-1])
def test_scorer_passes_every_data_set_image(width, height):
    for index in range(60):
        image, spec = sample(11, index, width, height)
        verdict = score(image, spec.caption)
        assert verdict.success, (spec, verdict)
        assert verdict.count == 1 and verdict.objects[0].colour == spec.colour


def test_scorer_fails_wrong_colour_two_objects_and_noise():
    image, spec = sample(0, 0, 128, 128)
    wrong = next(c for c in COLOURS if c != spec.colour)
    verdict = score(image, caption(wrong, spec.shape, spec.background))
    assert not verdict.success and verdict.count == 1 and not verdict.colour_ok

    two = Image.new("RGB", (256, 128), BACKGROUNDS["white"])
    draw = ImageDraw.Draw(two)
    draw.ellipse((10, 20, 70, 80), fill=COLOURS["red"])
    draw.ellipse((150, 30, 210, 90), fill=COLOURS["red"])
    verdict = score(two, "a red circle on a white background")
    assert verdict.count == 2 and verdict.colour_ok and not verdict.success
    assert verdict.describe() == "FAIL: 2 (red, red)"

    rng = np.random.default_rng(0)
    for _ in range(20):
        noise = rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)
        for words in vocabulary()[:6]:
            assert not score(noise, caption(*words)).success


def test_specks_below_one_percent_are_ignored():
    image = Image.new("RGB", (100, 100), BACKGROUNDS["black"])
    draw = ImageDraw.Draw(image)
    draw.rectangle((10, 10, 59, 59), fill=COLOURS["green"])
    draw.rectangle((80, 80, 88, 88), fill=COLOURS["green"])  # 81 px < 1 % of 10,000
    assert score(image, "a green square on a black background").success
    draw.rectangle((80, 80, 90, 90), fill=COLOURS["green"])  # 121 px >= 1 %
    assert score(image, "a green square on a black background").count == 2


def test_wrong_background_is_one_big_object_of_the_wrong_colour():
    image = render(draw_spec(0, 1, 128, 128), 128, 128)
    spec = draw_spec(0, 1, 128, 128)
    other = "black" if spec.background == "white" else "white"
    assert not score(image, caption(spec.colour, spec.shape, other)).success


def test_labelling_matches_a_flood_fill_on_random_masks():
    rng = np.random.default_rng(1)
    for _ in range(30):
        mask = rng.random((23, 31)) < 0.45
        labels, count = label_regions(mask)
        assert (labels > 0).sum() == mask.sum()
        # Reference: breadth-first flood fill, 8-neighbourhood.
        seen = np.zeros_like(mask)
        regions = 0
        for y, x in zip(*np.nonzero(mask)):
            if seen[y, x]:
                continue
            regions += 1
            stack, members = [(y, x)], set()
            seen[y, x] = True
            while stack:
                cy, cx = stack.pop()
                members.add(labels[cy, cx])
                for dy in (-1, 0, 1):
                    for dx in (-1, 0, 1):
                        ny, nx = cy + dy, cx + dx
                        if 0 <= ny < 23 and 0 <= nx < 31 and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            stack.append((ny, nx))
            assert len(members) == 1  # one flood-filled region carries one label
        assert regions == count


def test_scorer_rejects_non_rgb_arrays():
    with pytest.raises(ValueError, match=r"expected an RGB uint8 image of shape \(H, W, 3\); got float64 \(8, 8\)"):
        score(np.zeros((8, 8)), "a red circle on a white background")


def test_tokenizer_reads_each_word_as_one_token(tmp_path):
    from transformers import CLIPTokenizer

    from resadapter_rt.models.mini import WORDS, write_tokenizer

    write_tokenizer(tmp_path / "tok")
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path / "tok")
    for words in vocabulary():
        assert tokenizer.tokenize(caption(*words)) == [w + "</w>" for w in caption(*words).split()]
    assert set(WORDS) == {w for words in vocabulary() for w in caption(*words).split()}


@pytest.mark.parametrize("width,height", [(128, 128), (384, 128), (64, 200)])
def test_colour_codec_vae_is_an_exact_block_mean_codec(width, height):
    """mini-sd15's hand-set AutoencoderKL: latents are 8x8 block means, decoding paints them back as blocks."""
    import torch

    from resadapter_rt.models.mini import colour_codec_vae

    vae = colour_codec_vae()
    images = [sample(4, i, width, height)[0] for i in range(4)]
    x = torch.from_numpy(np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1).permute(0, 3, 1, 2)
    with torch.no_grad():
        posterior = vae.encode(x).latent_dist
        decoded = vae.decode(posterior.mean).sample
    means = torch.nn.functional.avg_pool2d(x, 8)
    assert float((posterior.mean[:, :3] - means).abs().max()) < 1e-3  # 1/8 of a grey level
    assert float(posterior.mean[:, 3].abs().max()) == 0.0 and float(posterior.std.max()) < 1e-6
    assert float((decoded - torch.nn.functional.interpolate(means, scale_factor=8)).abs().max()) < 1e-3
