"""``maskkit mask`` and ``maskkit preview`` end to end on real photos."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from maskkit.cli import main
from maskkit.render import STYLES, coverage_check


@pytest.fixture(scope="module")
def src_tree(photos_dir, tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    shutil.copy(photos_dir / "obama.jpg", src / "obama.jpg")
    shutil.copy(photos_dir / "friends_t1.jpg", src / "friends_t1.jpg")
    shutil.copy(photos_dir / "dogs.jpg", src / "dogs.jpg")  # no human face
    (src / "people").mkdir()
    shutil.copy(photos_dir / "biden.jpg", src / "people" / "biden.jpg")
    Image.open(photos_dir / "einstein.jpg").convert("RGB").save(src / "people" / "einstein.png")
    (src / "broken.jpg").write_bytes(b"this is not a jpeg")
    return src


def _run(args):
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res


def _jsonl(p: Path):
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def mask_out(src_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("masked")
    res = _run(["mask", "--src", str(src_tree), "--out", str(out), "--seed", "3", "--coverage", "--jobs", "1",
                "--quiet"])
    return out, json.loads(res.output.strip().splitlines()[-1])


def test_mask_accounts_for_every_file(mask_out):
    out, summary = mask_out
    assert summary["files"] == 6 == summary["ok"] + summary["failed"]
    fails = {f["src"]: f["reason"] for f in _jsonl(out / "failures.jsonl")}
    assert fails == {"dogs.jpg": "no_face", "broken.jpg": "decode_error"}
    man = _jsonl(out / "manifest.jsonl")
    srcs = {r["src"] for r in man}
    assert srcs == {"obama.jpg", "friends_t1.jpg", "people/biden.jpg", "people/einstein.png"}
    # every face of a group photo has a row: 6 found (measured 2026-12-06: HOG 0.57 at least, limit
    # 0), one of which passes the landmark check by a hair (docs/MARGINS.md); at least 5
    assert sum(r["src"] == "friends_t1.jpg" for r in man) >= 5
    assert summary["faces"] == sum(r["masked"] for r in man)
    for r in man:
        if r["masked"]:
            assert r["style"] in STYLES and r["params"]["style"] == r["style"]
            assert {"template", "colour", "offsets", "yaw"} <= set(r["params"])
    assert (out / "people" / "einstein.png").exists() and (out / "people" / "biden.jpg").exists()
    assert not (out / "dogs.jpg").exists()


def test_masked_images_cover_each_face_and_leave_the_rest(mask_out, src_tree):
    out, _ = mask_out
    for r in _jsonl(out / "manifest.jsonl"):
        if not r["masked"]:
            continue
        cov = np.asarray(Image.open(out / (Path(r["out"]).with_suffix("").as_posix() + ".mask.png")),
                         np.float32) / 255.0
        rep = coverage_check(cov, np.asarray(r["landmarks68"]))
        assert not rep["uncovered"] and not rep["eyes_covered"], (r["src"], r["face"], rep)
    # PNG output is lossless: outside the coverage the pixels are the input's
    src = np.asarray(Image.open(src_tree / "people" / "einstein.png").convert("RGB"))
    dst = np.asarray(Image.open(out / "people" / "einstein.png").convert("RGB"))
    cov = np.asarray(Image.open(out / "people" / "einstein.mask.png"))
    assert np.array_equal(src[cov == 0], dst[cov == 0])
    assert np.abs(src[cov > 200].astype(int) - dst[cov > 200]).mean() > 20


def test_mask_is_reproducible_across_runs_and_workers(src_tree, mask_out, tmp_path):
    out, _ = mask_out
    _run(["mask", "--src", str(src_tree), "--out", str(tmp_path / "again"), "--seed", "3", "--jobs", "2", "--quiet"])
    a = sorted((r["src"], r["face"], json.dumps(r["params"], sort_keys=True)) for r in _jsonl(out / "manifest.jsonl"))
    b = sorted((r["src"], r["face"], json.dumps(r["params"], sort_keys=True))
               for r in _jsonl(tmp_path / "again" / "manifest.jsonl"))
    assert a == b
    _run(["mask", "--src", str(src_tree / "people"), "--out", str(tmp_path / "other"), "--seed", "4", "--quiet"])
    c = {(r["src"].split("/")[-1], r["face"]): r["params"] for r in _jsonl(tmp_path / "other" / "manifest.jsonl")}
    a2 = {(r["src"].split("/")[-1], r["face"]): r["params"] for r in _jsonl(out / "manifest.jsonl")
          if r["src"].startswith("people/")}
    assert c.keys() == a2.keys() and c != a2  # another seed, other masks


def test_mask_one_style_on_aligned_crops(celeb_aligned, tmp_path):
    src = tmp_path / "crops"
    (src / "a").mkdir(parents=True)
    ident = sorted(p for p in celeb_aligned.iterdir() if p.is_dir())[0]
    for f in sorted(ident.glob("*.jpg"))[:4]:
        shutil.copy(f, src / "a" / f.name)
    res = _run(["mask", "--src", str(src), "--out", str(tmp_path / "o"), "--style", "gas", "--aligned", "--quiet"])
    s = json.loads(res.output.strip().splitlines()[-1])
    assert s["files"] == 4 and s["ok"] == 4 and s["styles"]["gas"] == 4
    for f in (tmp_path / "o" / "a").glob("*.jpg"):
        assert Image.open(f).size == (112, 112)


def test_mask_rejects_bad_arguments(src_tree, tmp_path):
    r = CliRunner().invoke(main, ["mask", "--src", str(src_tree), "--out", str(src_tree)])
    assert r.exit_code != 0 and "differ" in r.output
    r = CliRunner().invoke(main, ["mask", "--src", str(src_tree), "--out", str(tmp_path), "--style", "bandana"])
    assert r.exit_code != 0
    for cmd in ("mask", "preview"):
        h = CliRunner().invoke(main, [cmd, "--help"])
        assert h.exit_code == 0 and "Usage" in h.output


def _sheet(path):
    im = np.asarray(Image.open(path).convert("RGB"))
    return im


def _dark_share(rgb: np.ndarray) -> float:
    """Share of near-black pixels (every channel below 40)."""
    return float((rgb.astype(int).max(-1) < 40).mean())


def test_preview_from_a_folder_of_photos(src_tree, tmp_path):
    out = tmp_path / "sheet.png"
    res = _run(["preview", str(src_tree / "people"), "-o", str(out), "--n", "2"])
    info = json.loads(res.output.strip().splitlines()[-1])
    assert info["kind"] == "faces" and info["faces"] == 2 and info["columns"] == 6
    im = _sheet(out)
    from maskkit.pipeline.preview import CELL

    assert im.shape[1] >= 6 * CELL and im.shape[0] >= 2 * CELL
    # masked cells differ from the face cell of the same row
    row = im[-CELL - 2:-2]
    face = row[:, 2:2 + CELL].astype(int)
    for j in range(1, 6):
        x = 2 + j * (CELL + 2)
        assert np.abs(row[:, x:x + CELL].astype(int) - face).mean() > 5


def test_preview_says_which_files_it_read_gave_no_face(src_tree, tmp_path):
    """A sheet is a sample of the faces, but the files it read and could not use are counted by
    reason in its summary (a new user's bad inputs were left out without a word)."""
    res = _run(["preview", str(src_tree), "-o", str(tmp_path / "sheet.png"), "--n", "40"])
    info = json.loads(res.output.strip().splitlines()[-1])
    assert info["left_out"] == {"decode_error": 1, "no_face": 1}  # broken.jpg, dogs.jpg
    assert info["faces"] >= 8  # friends 6, obama, biden, einstein


def test_preview_from_mask_output(mask_out, tmp_path):
    out, _ = mask_out
    res = _run(["preview", str(out), "-o", str(tmp_path / "m.png"), "--n", "3"])
    info = json.loads(res.output.strip().splitlines()[-1])
    assert info["kind"] == "masked" and info["faces"] >= 3
    assert (tmp_path / "m.png").exists()


def test_preview_from_a_shard_set(celeb_aligned, tmp_path):
    """A FORMAT.md shard set: unmasked samples with landmarks are masked in every style."""
    from maskkit.face.landmarks import landmarks_in_box
    from maskkit.io.image_io import encode_jpeg, load_image
    from maskkit.io.shards import Sample, ShardSink

    shards = tmp_path / "shards"
    ident = sorted(p for p in celeb_aligned.iterdir() if p.is_dir())[1]
    with ShardSink(shards, shard_samples=100) as sink:  # train-000000.tar
        for k, f in enumerate(sorted(ident.glob("*.jpg"))[:3]):
            rgb = load_image(f)
            meta = {"label": 0, "identity": ident.name, "src": f.name, "face": 0, "masked": False, "style": None,
                    "mask": None, "landmarks5": [[0, 0]] * 5,
                    "landmarks68": landmarks_in_box(rgb).round(2).tolist(), "score": None, "twin": None}
            sink.add(Sample(f"s{k:04d}", encode_jpeg(rgb), meta))
    # a bare manifest (no shard list): the reader takes every *.tar in the folder
    (shards / "manifest.json").write_text(json.dumps({"format": "maskkit-shards", "version": 1}))
    res = _run(["preview", str(shards), "-o", str(tmp_path / "s.png"), "--styles", "n95,cloth", "--n", "2"])
    info = json.loads(res.output.strip().splitlines()[-1])
    assert info == {"kind": "faces", "faces": 2, "rows": 2, "columns": 3, "out": str(tmp_path / "s.png")}
    # the face cells show image pixels down to their last row: an ArcFace crop's chin sits near
    # its bottom edge, and a crop window hanging over that edge used to leave a dark strip
    from maskkit.pipeline.preview import _LABEL_H, CELL

    sheet = _sheet(tmp_path / "s.png")
    for i, f in enumerate(sorted(ident.glob("*.jpg"))[:2]):
        src_bottom = load_image(f)[-8:]
        cell = sheet[_LABEL_H + i * (CELL + 2):_LABEL_H + i * (CELL + 2) + CELL, 2:2 + CELL]
        assert _dark_share(cell[-12:]) <= _dark_share(src_bottom) + 0.1
        assert abs(cell[-12:].mean() - src_bottom.mean()) < 25
    # with masked samples in the set, the sheet shows those, by style
    from maskkit.render import render_mask

    with ShardSink(shards, shard_samples=100, start_index=1) as sink:  # train-000001.tar
        for k, f in enumerate(sorted(ident.glob("*.jpg"))[3:6]):
            rgb = load_image(f)
            lm = landmarks_in_box(rgb)
            res = render_mask(rgb, lm, "kn95", np.random.default_rng(k))
            meta = {"label": 0, "identity": ident.name, "src": f.name, "face": 0, "masked": True, "style": "kn95",
                    "mask": res.params, "landmarks5": [[0, 0]] * 5, "landmarks68": lm.round(2).tolist()}
            sink.add(Sample(f"m{k:04d}", encode_jpeg(res.image), meta))
    res = _run(["preview", str(shards), "-o", str(tmp_path / "s2.png"), "--n", "2"])
    info = json.loads(res.output.strip().splitlines()[-1])
    assert info["kind"] == "masked" and info["faces"] == 2 and info["columns"] == 1


def test_demo_sheet_regenerates(tmp_path):
    from maskkit.pipeline.preview import write_demo

    p = write_demo(tmp_path / "demo.png", seeds=(0,))
    im = _sheet(p)
    assert im.shape[0] > 2 * 150 and im.shape[1] > 6 * 150


def test_preview_unwritable_out_is_a_clear_error_before_any_work(src_tree, tmp_path, monkeypatch):
    import maskkit.pipeline.preview as pv

    def boom(*a, **k):
        raise AssertionError("the faces were loaded before the output was checked")

    monkeypatch.setattr(pv, "load_source_faces", boom)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    for bad in (blocker / "sheet.png", blocker / "sub" / "sheet.png"):
        r = CliRunner().invoke(main, ["preview", str(src_tree / "people"), "-o", str(bad)])
        assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
        assert "Traceback" not in r.output
        lines = [x for x in r.output.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: cannot write"), r.output


def _mask_names(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.suffix in (".jpg", ".png")}


def test_mask_rerun_into_another_runs_out(src_tree, tmp_path):
    out = tmp_path / "m"
    base = ["mask", "--src", str(src_tree / "people"), "--out", str(out), "--style", "n95", "-q"]
    _run(base + ["--coverage"])
    first = _mask_names(out)
    assert "people/biden.mask.png" not in first and "biden.mask.png" in first
    _run(base + ["--coverage"])  # identical options: proceeds, same files
    assert _mask_names(out) == first
    r = CliRunner().invoke(main, base + ["--style", "cloth"])
    assert r.exit_code != 0 and "another run" in r.output and "--overwrite" in r.output
    assert _mask_names(out) == first
    # an option left at its default is named so (it read "colour: None -> 'white'")
    r = CliRunner().invoke(main, base + ["--coverage", "--colour", "white"])
    assert r.exit_code != 0 and "colour: default -> 'white'" in " ".join(r.output.split()), r.output
    _run(base + ["--style", "cloth", "--overwrite"])
    man = _jsonl(out / "manifest.jsonl")
    assert _mask_names(out) == {r["out"] for r in man}  # the stale coverage PNGs are gone
    assert {r["style"] for r in man if r["masked"]} == {"cloth"}


def test_jobs_option_is_consistent_across_commands():
    """align, mask and synth: -j/--jobs defaults to 0 = as many workers as pay off, up to all CPU
    cores (-1 too, in every command); the help says so, and where the rule lives it holds: a small job
    runs in this process, a big one on every core (maskkit.pipeline.runner.auto_workers)."""
    from maskkit.pipeline.runner import FILES_PER_WORKER, auto_workers
    import click

    from maskkit.cli.align import align
    from maskkit.cli.mask import mask
    from maskkit.cli.synth import synth

    for cmd in (align, mask, synth):
        opt = next(p for p in cmd.params if p.name == "jobs")
        assert opt.default == 0 and "-j" in opt.opts, cmd.name
        assert "0 or -1 = as many as pay off" in opt.help and "up to all CPU cores" in opt.help, cmd.name
        h = CliRunner().invoke(main, [cmd.name, "--help"])
        assert h.exit_code == 0 and "0 or -1 = as many as pay off" in " ".join(h.output.split())
    assert auto_workers(400, 5, cores=16) == 1  # the new user's 400 crops: one process (it was all cores)
    assert auto_workers(2 * FILES_PER_WORKER - 1, 100, cores=16) == 1
    assert auto_workers(2 * FILES_PER_WORKER, 100, cores=16) == 2
    assert auto_workers(10**6, 100, cores=16) == 16 and auto_workers(10**6, 3, cores=16) == 3
    synth_jobs = next(p for p in synth.params if p.name == "jobs")
    ctx = synth.make_context("synth", ["--src", ".", "--out", "x", "-j", "-1"])
    assert ctx.params["jobs"] == -1
    with pytest.raises(click.BadParameter):
        synth_jobs.type.convert("-2", synth_jobs, None)


def test_preview_of_a_shard_set_samples_across_identities(celeb_aligned, tmp_path):
    """A synth set whose identities each hold many masks of one style: the preview column shows
    one face per identity (it showed the first identity's faces only), and repeats identities
    only once every identity is shown. Cells are matched to their samples pixel for pixel."""
    from maskkit.io.image_io import decode_image
    from maskkit.io.shards import read_samples
    from maskkit.pipeline.preview import _LABEL_H, CELL, face_crop
    from maskkit.pipeline.synth import SynthConfig, run_synth

    src = tmp_path / "src"
    for d in sorted(p for p in celeb_aligned.iterdir() if p.is_dir())[:5]:
        (src / d.name).mkdir(parents=True)
        for f in sorted(d.glob("*.jpg"))[:8]:
            (src / d.name / f.name).symlink_to(f)
    shards = tmp_path / "shards"
    run_synth(SynthConfig(src=src, out=shards, aligned=True, ratio=1.0, styles=("surgical",), shard_samples=7,
                          progress=False))
    cells = {}
    for s in read_samples(shards):
        rgb = decode_image(s["jpg"])
        cells[face_crop(rgb, np.asarray(s["json"]["landmarks68"], np.float64)).tobytes()] = s["json"]["identity"]
    for n, distinct in ((4, 4), (7, 5)):
        out = tmp_path / f"p{n}.png"
        res = _run(["preview", str(shards), "-o", str(out), "--styles", "surgical", "--n", str(n)])
        assert json.loads(res.output.strip().splitlines()[-1])["faces"] == n
        sheet = _sheet(out)
        shown = [cells[sheet[_LABEL_H + i * (CELL + 2):_LABEL_H + i * (CELL + 2) + CELL, 2:2 + CELL].tobytes()]
                 for i in range(n)]
        assert len(set(shown)) == distinct, shown


def test_mask_on_the_bad_input_zoo(tmp_path):
    """``maskkit mask`` on the bad-input zoo (tests/zoo.py): every input is a written image or a
    failures.jsonl line with the expected reason; inputs whose names would clash (face.webp,
    face.tif, face.bmp -> face.png) each get their own output; the summary table's numbers equal
    the counts from manifest.jsonl / failures.jsonl exactly."""
    from collections import Counter

    from maskkit.io.image_io import load_image
    from zoo import FORTY_FACES, ZOO_FACE_COUNTS, ZOO_FACES_ACCEPTED_MIN, make_zoo, parse_summary

    expected = make_zoo(tmp_path / "zoo")
    out = tmp_path / "m"
    res = CliRunner().invoke(main, ["mask", "--src", str(tmp_path / "zoo"), "--out", str(out), "--jobs", "1",
                                    "--seed", "2"])
    assert res.exit_code == 0, res.output
    man, fails = _jsonl(out / "manifest.jsonl"), _jsonl(out / "failures.jsonl")
    failed = {f["src"]: f["reason"] for f in fails}
    written = {r["src"] for r in man}
    assert len(failed) == len(fails) and not written & set(failed)
    assert len(expected) == len(written) + len(failed)
    for rel, outcome in expected.items():
        if outcome == "ok":
            assert rel in written, f"{rel}: expected a masked image, got {failed.get(rel)}"
        else:
            assert failed.get(rel) == outcome, f"{rel}: expected {outcome}, got {failed.get(rel)}"
    assert all(f["detail"] for f in fails)
    # every face of the crowd found (a manifest row each, masked or not), and masked unless its
    # landmarks failed the check
    assert sum(r["src"] == FORTY_FACES for r in man) == ZOO_FACE_COUNTS[FORTY_FACES]
    assert sum(r["src"] == FORTY_FACES and r["masked"] for r in man) >= ZOO_FACES_ACCEPTED_MIN[FORTY_FACES]
    # one output file per written input, each decodable and different from its input
    outs = {r["src"]: r["out"] for r in man}
    assert len(set(outs.values())) == len(outs), "two inputs were written to the same output"
    assert {outs[f"modes/face.{e}"] for e in ("webp", "tif", "bmp")} == {
        "modes/face_webp.png", "modes/face_tif.png", "modes/face_bmp.png"}
    assert outs["people/astronaut.png"] == "people/astronaut.png"  # no clash: the plain name
    for src, o in outs.items():
        img, before = load_image(out / o), load_image(tmp_path / "zoo" / src)
        assert img.shape == before.shape, o
        changed = (np.abs(img.astype(np.int16) - before).max(axis=2) > 40).mean()
        # a mask was drawn, not just re-encoded: share of pixels more than 40 levels off, measured
        # 2026-12-06 0.0128 (modes/gray16.png: a grey cloth mask on the grey astronaut) to 0.149;
        # re-encoding alone moves none of them (0.0000 for every input). The bound was 0.01, 0.003
        # under the smallest; 0.004 is 3 times under it and still clear of re-encoding
        assert changed > 0.004, (o, changed)
    table = parse_summary(res.output)
    masked = [r for r in man if r["masked"]]
    assert table["files"] == len(expected) and table["ok"] == len(written)
    # unmasked faces: landmarks not on the face (bad_landmarks) are also rejected.jsonl lines and
    # "faces rejected" (the astronaut's suit emblem is one); the rest could not carry a mask
    rejected = _jsonl(out / "rejected.jsonl")
    unmasked = [r for r in man if not r["masked"]]
    assert sorted((r["src"], r["face"], r["out"]) for r in rejected) == sorted(
        (r["src"], r["face"], r["out"]) for r in unmasked if r["reason"] == "bad_landmarks")
    assert ("people/astronaut.png", 0) in {(r["src"], r["face"]) for r in rejected}
    assert table["faces rejected"] == (len(rejected), {"bad_landmarks": len(rejected)})
    # faces the mask cannot fit: unmasked in written images, and those of images none of whose
    # faces took a mask (a cannot_fit failure counts its faces; the table said 0 beside them)
    unfit_failed = [f.get("faces_unfit", 0) for f in fails if f["reason"] == "cannot_fit"]
    assert all(n >= 1 for n in unfit_failed)
    assert table["faces masked"] == len(masked)
    assert table["faces the mask cannot fit"] == len(unmasked) - len(rejected) + sum(unfit_failed)
    assert table["failed"] == (len(failed), dict(sorted(Counter(failed.values()).items())))
    assert table["styles"] == (len(masked), {s: sum(r["style"] == s for r in masked) for s in STYLES})
    assert table["workers"] == 1


def test_each_face_draws_from_its_own_generator(mask_out):
    """maskkit.pipeline.mask: randomness is seeded per file AND face. Every masked face's recorded
    style, template, colour and fit offsets are redrawn by ``face_rng(seed, src, face)`` (the
    derivation the manifest names), and the faces of one group photo get different draws."""
    from maskkit.pipeline.mask import face_rng
    from maskkit.render import MaskRenderer

    out, _ = mask_out
    rows = [r for r in _jsonl(out / "manifest.jsonl") if r["masked"]]
    ren = MaskRenderer()
    keys = ("style", "template", "colour", "offsets")
    for r in rows:
        assert r["params"]["seed"] == {"base": 3, "face": r["face"], "derivation": "maskkit.pipeline.mask.face_rng"}
        want = ren.sample_params("random", face_rng(3, r["src"], r["face"]))
        assert {k: want[k] for k in keys} == {k: r["params"][k] for k in keys}, (r["src"], r["face"])
    group = [r for r in rows if r["src"] == "friends_t1.jpg"]
    # 6 masked (2026-12-06); one friend's landmarks pass the check by a hair (refits 0.108 apart,
    # limit 0.10, then 3 of 10 search fits, 3 needed), the other 5 clear it (refits within 0.023)
    assert len(group) >= 5
    assert len({json.dumps(r["params"]["offsets"], sort_keys=True) for r in group}) == len(group)


def test_transparency_of_a_png_input_stays_in_its_output(astronaut, tmp_path):
    """An RGBA input is searched composited on white, and its masked PNG keeps the input's
    alpha channel (it came out opaque: transparent parts turned white); a JPEG output has none."""
    h, w = astronaut.shape[:2]
    alpha = np.full((h, w), 255, np.uint8)
    alpha[:, :60] = 0       # a transparent band at the left
    alpha[:40, 60:] = 128   # half transparent at the top
    (tmp_path / "src").mkdir()
    Image.fromarray(np.dstack([astronaut, alpha])).save(tmp_path / "src" / "rgba.png")
    Image.fromarray(astronaut).save(tmp_path / "src" / "opaque.png")
    _run(["mask", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "-q", "--style", "surgical"])
    out = Image.open(tmp_path / "out" / "rgba.png")
    assert out.mode == "RGBA"
    got = np.asarray(out)
    assert np.array_equal(got[..., 3], alpha)
    # the mask is drawn: the face region changed against the input composited on white
    white = (astronaut.astype(float) * (alpha[..., None] / 255.0) + 255.0 * (1 - alpha[..., None] / 255.0))
    changed = np.abs(got[..., :3].astype(float) - np.round(white)).max(-1) > 40
    assert changed.mean() > 0.01
    assert Image.open(tmp_path / "out" / "opaque.png").mode == "RGB"
