"""Crops of another template size (issue 20): brought onto the 112 template, or refused, and recorded.

insightface also builds ``.bin`` sets (and training sets) of 128x128 crops on its 128 template
(``estimate_norm``: ``arcface_dst * S/128`` plus ``8 * S/128`` px in x). maskkit used to resize
them to 112: the face shrank by 112/128 and its points landed 7-9 px (RMS) off the 112 crop's,
with 40 warnings on stderr as the only trace. Here real faces (astronaut, grace_hopper; the
celeb-aligned crops when ../shared/data is present) are rendered at 112 and at another template
size from the same landmarks, and the crop read at 112 must be the 112 one:

* 128x128: pixel-identical (the change is a copy of columns 8..119, rows 0..111), so its dlib
  points are the 112 crop's (measured 0.00 px; limit 0.5 px); a plain resize puts them 7.6-8.6 px
  away (limit: at least 6 px);
* 256 / 384 (the 128 template at x2 / x3) and 224 (the 112 template at x2): within 2 px
  (measured 0.53-1.24 px); the resize of a 256 or 384 crop is 7.1-9.0 px away;
* through a ``.bin`` (JPEG q95), a random-weight IResNet embeds the converted faces at cosine
  >= 0.999 to the 112 ones (measured 0.9993 at the least over 56 celeb crops; a resize gives
  0.887 median, 0.958 at most), and ``metrics.json``, the table, the training log and
  ``embed``'s notes say what was done.
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from maskkit.face.align import ARCFACE_DST, align_face, arcface_template, five_points
from maskkit.io.crop_template import TemplateRefused, template_change, to_template


def _points(crop: np.ndarray) -> np.ndarray:
    """dlib's 5 points on an aligned crop (the box maskkit uses for pre-aligned crops)."""
    from maskkit.face.landmarks import landmarks_in_box

    return five_points(landmarks_in_box(crop, None))


def _rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(((np.asarray(a, float) - np.asarray(b, float)) ** 2).sum(1).mean()))


@pytest.fixture(scope="module")
def faces(astronaut, grace_hopper) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (photo, its 68 landmarks from maskkit's HOG detector)."""
    from maskkit.face.detect import make_detector

    hog = make_detector("hog")
    return {name: (im, max(hog.detect(im), key=lambda f: f.area).landmarks68)
            for name, im in (("astronaut", astronaut), ("grace", grace_hopper))}


def _render(faces, size) -> dict[str, np.ndarray]:
    return {n: align_face(im, lm, size).image for n, (im, lm) in faces.items()}


def test_templates_are_insightface_estimate_norm():
    """The template of each size, written here from estimate_norm's formula (not maskkit's code)."""
    for s in (112, 224, 448):
        assert np.allclose(arcface_template(s), ARCFACE_DST * s / 112, atol=1e-4)
    for s in (128, 256, 384):
        assert np.allclose(arcface_template(s), ARCFACE_DST * s / 128 + [8 * s / 128, 0], atol=1e-4)
    change = template_change(128, 112)
    assert (change.scale, change.shift, change.kind) == (1.0, (-8.0, 0.0), "warped")
    assert template_change(224, 112).kind == "scaled" and template_change(112, 112).kind == "same"


@pytest.mark.parametrize("size, limit", [(128, 0.5), (256, 2.0), (384, 2.0), (224, 2.0)])
def test_a_crop_of_another_template_becomes_the_112_crop(faces, size, limit):
    c112, other = _render(faces, 112), _render(faces, size)
    for name in faces:
        conv, change = to_template(other[name], (112, 112))
        assert conv.shape == (112, 112, 3) and change.src == (size, size)
        if size == 128:  # a copy of columns 8..119: the very pixels of the 112 crop
            assert np.array_equal(conv, c112[name])
        p112 = _points(c112[name])
        assert _rms(_points(conv), p112) <= limit, (name, size)
        if size % 128 == 0:  # before: a plain resize, the face shrunk by 112/128 and moved
            resized = cv2.resize(other[name], (112, 112), interpolation=cv2.INTER_AREA)
            assert _rms(_points(resized), p112) >= 6.0, (name, size)


def test_sizes_that_cannot_be_brought_onto_the_template_are_refused(faces):
    crop96 = align_face(*faces["astronaut"], (112, 96)).image
    with pytest.raises(TemplateRefused) as e:
        to_template(crop96, (112, 112))
    assert e.value.reason == "other_template" and "8 px on the left" in e.value.detail
    with pytest.raises(TemplateRefused) as e:
        to_template(np.zeros((100, 120, 3), np.uint8), (112, 112))
    assert e.value.reason == "no_template"
    with pytest.raises(TemplateRefused) as e:  # a 112 crop lacks the 128 crop's borders
        to_template(_render(faces, 112)["astronaut"], (128, 128))
    assert e.value.reason == "other_template" and "16 px on the bottom" in e.value.detail


# ------------------------------------------------------------------------------------------------
# eval: a .bin of 128 crops, the report, the table; a folder; embed
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_run(tmp_path_factory):
    """A maskkit run folder holding a random-weight single-stream r18 (geometry-sensitive)."""
    from maskkit.training.config import TrainConfig
    from maskkit.training.model import build_model

    torch.manual_seed(0)
    cfg = TrainConfig(method="arcface", backbone="r18", width=0.25, embedding_size=128, dropout=0.0,
                      two_stream=False)
    run = tmp_path_factory.mktemp("tpl") / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(cfg.to_json())
    torch.save({"config": cfg.to_dict(), "model": build_model(cfg).state_dict()}, run / "checkpoints" / "last.pt")
    return run


def _pairs(crops: dict[str, np.ndarray]) -> tuple[list[np.ndarray], list[bool]]:
    a, g = crops["astronaut"], crops["grace"]
    images, same = [], []
    for k in range(12):
        images += [a, a] if k % 2 == 0 else [a, g]
        same.append(k % 2 == 0)
    return images, same


def _eval(run, bin_path, out):
    from click.testing import CliRunner

    from maskkit.cli import main

    res = CliRunner().invoke(main, ["eval", "--model", str(run), "--bin", str(bin_path), "--mask-side", "none",
                                    "--out", str(out)], env={"COLUMNS": "80"})  # the table (not -q): its notes
    assert res.exit_code == 0, res.output + repr(res.exception)
    return json.loads((out / "metrics.json").read_text()), np.load(out / "embeddings.npz"), res.output


def test_a_bin_of_128_crops_embeds_like_the_112_bin_and_the_record_says_so(faces, random_run, tmp_path):
    from maskkit.training.api import load_model
    from maskkit.training.eval.evalsets import write_bin

    images112, same = _pairs(_render(faces, 112))
    images128, _ = _pairs(_render(faces, 128))
    write_bin(tmp_path / "at112.bin", images112, same)
    write_bin(tmp_path / "at128.bin", images128, same)  # JPEG q95, as insightface's sets
    m112, z112, _ = _eval(random_run, tmp_path / "at112.bin", tmp_path / "r112")
    m128, z128, out = _eval(random_run, tmp_path / "at128.bin", tmp_path / "r128")
    cos = (z112["mu"] * z128["mu"]).sum(1) / np.linalg.norm(z112["mu"], axis=1) / np.linalg.norm(z128["mu"], axis=1)
    assert cos.min() >= 0.999, cos.min()
    # before: the same faces resized from 128 embed measurably elsewhere (so the bound above can fail)
    model = load_model(random_run)
    mu_a, _ = model.embed(np.stack([images112[0]]))
    mu_r, _ = model.embed(np.stack([cv2.resize(images128[0], (112, 112), interpolation=cv2.INTER_AREA)]))
    assert float((mu_a * mu_r).sum() / np.linalg.norm(mu_a) / np.linalg.norm(mu_r)) < 0.99
    # the record: counts, what was done, a note; nothing for the 112 set
    what = ("128x128 crops on insightface's 128 template (arcface_dst + 8 px in x at 128) brought onto the "
            "112x112 template: shifted -8 px in x, not resized")
    assert m128["counts"]["template_converted"] == 24 and m128["input_templates"] == {what: 24}
    assert f"24 images: {what}" in m128["notes"]
    assert m112["counts"]["template_converted"] == 0 and m112["input_templates"] == {}
    assert "128x128 crops on insightface's 128 template" in out  # the note, under the terminal table
    assert any("crops from another template" in ln and "24" in ln for ln in out.splitlines()), out


def test_a_bin_with_crops_of_no_usable_template_records_each(faces, tmp_path):
    from maskkit.training.eval.evalsets import load_bin, write_bin

    c112 = _render(faces, 112)["astronaut"]
    crop96 = align_face(*faces["astronaut"], (112, 96)).image
    odd = cv2.resize(c112, (120, 100))
    images = [c112] * 24
    images[3], images[8] = crop96, odd
    ps = load_bin(write_bin(tmp_path / "mixed.bin", images, [k % 2 == 0 for k in range(12)], ext=".png"))
    assert [(f["src"], f["reason"]) for f in ps.failures] == [("mixed.bin:3", "other_template"),
                                                               ("mixed.bin:8", "no_template")]
    assert [r["pair"] for r in ps.skipped_pairs] == [1, 4] and ps.n_pairs == 10 and ps.templates == {}


def test_a_folder_of_128_crops_is_aligned_by_their_template_and_noted(faces, random_run, tmp_path):
    from maskkit.training.eval.embed import run_embed
    from maskkit.training.eval.evalsets import FaceAligner

    c112, c128 = _render(faces, 112), _render(faces, 128)
    for name in faces:
        img, _lm, note = FaceAligner()(c128[name])
        assert np.array_equal(img, c112[name])
        assert note.startswith("template: 128x128 crops on insightface's 128 template") and note.endswith(
            "on the template (checked)")
        img, _lm, note = FaceAligner(trust_aligned=True)(c128[name])
        assert np.array_equal(img, c112[name]) and note.endswith("trusted (--aligned)")
    # a 128x128 image that is no crop (a loose square around the face) is aligned from its landmarks
    photo, _ = faces["astronaut"]
    thumb = cv2.resize(np.ascontiguousarray(photo[10:250, 130:370]), (128, 128), interpolation=cv2.INTER_AREA)
    img, lm, note = FaceAligner()(thumb)
    assert note is None and _rms(five_points(lm), ARCFACE_DST) < 6.0
    # embed: the archive's notes say what was done, per image; the summary counts it
    src = tmp_path / "src" / "someone"
    src.mkdir(parents=True)
    for name in faces:
        cv2.imwrite(str(src / f"{name}.png"), c128[name][:, :, ::-1])
    s = run_embed(str(random_run), str(tmp_path / "src"), str(tmp_path / "e.npz"), progress=False)
    assert s["embedded"] == 2 and s["template_converted"] == 2 and s["failed"] == 0
    notes = [json.loads(n) for n in np.load(tmp_path / "e.npz")["notes"]]
    assert sorted(n["path"] for n in notes) == ["someone/astronaut.png", "someone/grace.png"]
    assert all("shifted -8 px in x, not resized" in n["note"] for n in notes)


def test_celeb_crops_rerendered_at_128_read_back_as_the_112_crops(celeb_aligned):
    """Every 20th celeb-aligned crop (112 of 2,223), re-rendered at the 128 template (its 8 + 8
    side columns and 16 bottom rows filled by the edge) and JPEG q95-encoded, decodes at 112 as
    the 112 crop: mean |difference| at most 2 levels each (measured over all 2,223: 1.37 at
    most, JPEG's chroma blocks), dlib points 0.53 px RMS from the 112 crop's (median; limit 1.0);
    resized instead, 9.03 px (median; limit at least 6)."""
    from maskkit.io.image_io import decode_crop, encode_jpeg, load_image

    files = sorted(celeb_aligned.glob("*/*.jpg"))[::20]
    assert len(files) >= 100
    after, before = [], []
    for f in files:
        c = load_image(f)
        data = encode_jpeg(cv2.copyMakeBorder(c, 0, 16, 8, 8, cv2.BORDER_REPLICATE), 95)
        conv, ref = decode_crop(data, (112, 112)), decode_crop(encode_jpeg(c, 95))
        assert np.abs(conv.astype(float) - ref).mean() <= 2.0, f
        p = _points(ref)
        after.append(_rms(_points(conv), p))
        before.append(_rms(_points(cv2.resize(decode_crop(data), (112, 112), interpolation=cv2.INTER_AREA)), p))
    assert np.median(after) <= 1.0 and np.median(before) >= 6.0, (np.median(after), np.median(before))


# ------------------------------------------------------------------------------------------------
# training data: the same mechanism, and the run's log
# ------------------------------------------------------------------------------------------------
def _shards(faces, tmp_path_factory, size: int):
    from maskkit.training.data import write_shards

    crops = _render(faces, size)
    samples = [{"key": f"{n}{j}", "image": crops[n], "label": li, "masked": False}
               for li, n in enumerate(faces) for j in range(4)]
    out = tmp_path_factory.mktemp(f"shards{size}")
    write_shards(out, samples, list(faces), shard_samples=4)
    return out


@pytest.fixture(scope="module")
def shards128(faces, tmp_path_factory):
    return _shards(faces, tmp_path_factory, 128)


def test_training_reads_128_shards_on_the_112_template(faces, shards128):
    from maskkit.io.image_io import decode_crop, encode_jpeg
    from maskkit.training.data import ShardStream, open_shards

    shards = open_shards(shards128)
    assert shards.manifest["image_size"] == [128, 128]
    stream = ShardStream(shards, batch_size=8, seed=0, shuffle_buffer=8, augment=False)
    assert stream.template_note.endswith("brought onto the 112x112 template: shifted -8 px in x, not resized")
    batch = next(iter(stream))
    c112 = _render(faces, 112)
    for img, label in zip(batch["images"].numpy(), batch["labels"].tolist()):
        want = decode_crop(encode_jpeg(_render(faces, 128)[list(faces)[label]], 95), None)[:112, 8:120]
        assert np.array_equal(img, want)  # the decoded 128 crop's columns 8..119: no resampling
        assert _rms(_points(img), _points(c112[list(faces)[label]])) <= 1.0
    with pytest.raises(TemplateRefused):  # a size of no template
        ShardStream(shards, batch_size=8, image_size=(120, 100))


def test_a_training_run_on_128_shards_logs_what_was_done(faces, shards128, tmp_path, tmp_path_factory):
    from click.testing import CliRunner

    from maskkit.cli import main

    run = tmp_path / "run"
    common = ["train", "--data", str(shards128), "--method", "arcface", "--backbone", "r18", "--batch-size", "4",
              "--num-workers", "0", "--steps-per-epoch", "1", "--max-steps", "1", "-q", "--set", "width=0.25",
              "--set", "tensorboard=false", "--set", "shuffle_buffer=8"]
    res = CliRunner().invoke(main, common + ["--out", str(run)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    events = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    data = [e for e in events if e.get("event") == "data_template"]
    assert len(data) == 1 and "128x128 crops on insightface's 128 template" in data[0]["note"]
    # 112 crops for a 128 run: they lack the 128 crop's borders; one line, nothing trained
    shards112 = _shards(faces, tmp_path_factory, 112)
    common[2] = str(shards112)
    res = CliRunner().invoke(main, common + ["--out", str(tmp_path / "bad"), "--set", "image_size=[128, 128]"])
    assert res.exit_code == 1 and res.output.strip().count("\n") == 0, res.output
    assert f"--data {shards112}" in res.output and "lack 8 px on the left" in res.output
    assert not (tmp_path / "bad" / "checkpoints" / "last.pt").exists()
