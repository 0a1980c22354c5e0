"""``maskkit align`` end to end: the bad-input zoo is fully accounted (files == ok + failed, each
failure with its expected reason), outputs mirror the tree and stay inside --out, the process
pool gives the same result as one process, and bad arguments fail with a clear message."""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from maskkit.cli import main
from maskkit.pipeline.align import AlignConfig, output_names, run_align
from maskkit.io.image_io import load_image
from maskkit.pipeline.runner import safe_target
from maskkit.io.sources import SourceItem, iter_sources
from zoo import FORTY_FACES, ZOO_FACE_COUNTS, ZOO_FACES_ACCEPTED_MIN, make_zoo, parse_summary


def _jsonl(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo_src")
    return root, make_zoo(root)


@pytest.fixture(scope="module")
def zoo_run(zoo, tmp_path_factory):
    root, expected = zoo
    out = tmp_path_factory.mktemp("zoo_out")
    res = CliRunner().invoke(main, ["align", "--src", str(root), "--out", str(out), "--faces", "all", "--jobs", "1"])
    assert res.exit_code == 0, res.output
    return out, expected, res


def test_zoo_accounting(zoo_run):
    out, expected, res = zoo_run
    manifest, failures = _jsonl(out / "manifest.jsonl"), _jsonl(out / "failures.jsonl")
    ok_src = {r["src"] for r in manifest}
    failed = {r["src"]: r["reason"] for r in failures}
    files = len(expected)
    assert files == len(ok_src) + len(failed)            # files == ok + failed
    assert not ok_src & set(failed)
    for rel, outcome in expected.items():
        if outcome == "ok":
            assert rel in ok_src, f"{rel}: expected a face, got {failed.get(rel)}"
        else:
            assert failed.get(rel) == outcome, f"{rel}: expected {outcome}, got {failed.get(rel)}"
    assert all(r["detail"] for r in failures)
    # the summary table reports exactly the same numbers, row by row
    table = parse_summary(res.output)
    reasons = Counter(failed.values())
    no_face = reasons.pop("no_face", 0)
    assert table["files"] == files and table["ok"] == len(ok_src) == sum(v == "ok" for v in expected.values())
    assert table["faces written"] == len(manifest) and table["no face"] == no_face == 1
    assert table["errors"] == (sum(reasons.values()), dict(sorted(reasons.items())))
    assert table["workers"] == 1
    # faces left out of written inputs (the astronaut's suit emblem: 6 of the zoo's images): rejected.jsonl,
    # never an input of failures.jsonl, each line a face the manifest does not hold
    rejected = _jsonl(out / "rejected.jsonl")
    assert {r["src"] for r in rejected} <= ok_src
    assert not {(r["src"], r["face"]) for r in rejected} & {(r["src"], r["face"]) for r in manifest}
    assert table["faces rejected"] == (len(rejected), dict(Counter(r["reason"] for r in rejected)))
    assert {("people/astronaut.png", 0, "bad_landmarks")} <= {(r["src"], r["face"], r["reason"]) for r in rejected}


@pytest.mark.parametrize("fmt", ["images", "shards"])
def test_faces_all_records_the_rejected_face(tmp_path, astronaut, fmt):
    """--faces all on the astronaut: HOG finds 2 detections; 0 (an emblem on her suit, below her
    face) fails the landmark check, 1 (her face) is written. The emblem is exactly one
    rejected.jsonl line (face 0, bad_landmarks) counted in the summary table and dict -- not a
    silent drop -- and failures.jsonl stays empty (the input gave a face: files == ok + failed).
    The test needs the emblem found and rejected: HOG scores it 0.117 (limit 0; 0.098 at least
    over copies with 1-grey-level noise, and the PNG gives every CPU the same pixels), and two
    checks reject it, the CNN backstop seeing no face there at any angle (test_face_quality's
    emblem test; docs/MARGINS.md)."""
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(astronaut).save(src / "astronaut.png")
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["align", "--src", str(src), "--out", str(out), "--faces", "all", "--jobs", "1",
                                    "--format", fmt])
    assert res.exit_code == 0, res.output
    [rej] = _jsonl(out / "rejected.jsonl")
    assert (rej["src"], rej["face"], rej["reason"]) == ("astronaut.png", 0, "bad_landmarks"), rej
    assert rej["detail"] and rej["landmark_check"]["ok"] is False
    assert _jsonl(out / "failures.jsonl") == []
    table = parse_summary(res.output)
    assert table["faces rejected"] == (1, {"bad_landmarks": 1})
    assert table["ok"] == 1 and table["failed"] == 0
    if fmt == "images":
        [face] = _jsonl(out / "manifest.jsonl")
        assert face["face"] == 1 and face["out"] == "astronaut_1.jpg"
        # the rejected box is the emblem: wholly below the written face's box (image y grows downwards)
        assert rej["box"][1] > face["box"][3], (rej["box"], face["box"])
        finished = json.loads((out / "maskkit-run.json").read_text())["finished"]["summary"]
        assert finished["faces_rejected"] == 1 and finished["rejected_by_reason"] == {"bad_landmarks": 1}
        # a finished run of a maskkit that wrote no rejected.jsonl is not "already complete": it is redone
        (out / "rejected.jsonl").unlink()
        again = CliRunner().invoke(main, ["align", "--src", str(src), "--out", str(out), "--faces", "all", "-q"])
        assert again.exit_code == 0 and "already complete" not in again.output, again.output
        assert json.loads(again.output.strip().splitlines()[-1])["faces_rejected"] == 1
        assert _jsonl(out / "rejected.jsonl") == [rej]
    else:
        from maskkit.io.shard_verify import verify
        from maskkit.io.shards import read_samples

        rep = verify(out)
        assert rep.ok, rep.problems
        assert rep.manifest["faces_rejected"] == 1 and rep.manifest["faces_rejected_by_reason"] == {"bad_landmarks": 1}
        [face] = [s["json"] for s in read_samples(out, members={"json"})]
        assert face["face"] == 1


def test_zoo_outputs(zoo_run):
    out, expected, _ = zoo_run
    manifest = _jsonl(out / "manifest.jsonl")
    per_src: dict[str, list[dict]] = {}
    for r in manifest:
        per_src.setdefault(r["src"], []).append(r)
    # every face of the crowd found: written, or recorded in rejected.jsonl (landmark check)
    crowd_rejected = [r for r in _jsonl(out / "rejected.jsonl") if r["src"] == FORTY_FACES]
    assert len(per_src[FORTY_FACES]) + len(crowd_rejected) == ZOO_FACE_COUNTS[FORTY_FACES]
    assert len(per_src[FORTY_FACES]) >= ZOO_FACES_ACCEPTED_MIN[FORTY_FACES]
    root = out.resolve()
    for r in manifest:
        p = out / r["out"]
        assert root in p.resolve().parents
        p_src = Path(r["src"])
        if p_src.stem == "face":  # face.webp / face.tif / face.bmp share a stem: extension folded in
            want = f"{p_src.parent.as_posix()}/face_{p_src.suffix[1:]}_{r['face']}.jpg"
        else:
            want = (p_src.parent / f"{p_src.stem}_{r['face']}.jpg").as_posix()
        assert r["out"] == want and p.is_file()
        assert np.array(r["landmarks5"]).shape == (5, 2) and np.array(r["landmarks68"]).shape == (68, 2)
        assert np.array(r["matrix"]).shape == (2, 3)
    # unicode / space / dotted names are mirrored, decodable 112x112 crops ("with space" is the
    # astronaut: detection 0, left, is an emblem on her suit, rejected as bad_landmarks; 1 is her face)
    for rel in ("names/Zoë Ünïcode 名前_0.jpg", "names/with space_1.jpg", "names/many.dots.in.name_0.jpg",
                "modes/exif_rotated_0.jpg"):
        assert load_image(out / rel).shape == (112, 112, 3)
    # the EXIF-rotated face is upright: its eyes are on the template
    r = next(r for r in manifest if r["src"] == "modes/exif_rotated.jpg")
    assert np.abs(np.array(r["landmarks5"])[:2] - [[38.29, 51.70], [73.53, 51.50]]).max() < 5


def test_pool_matches_single_process(zoo, zoo_run, tmp_path):
    root, expected = zoo
    out1, _, _ = zoo_run
    summary = run_align(AlignConfig(src=root, out=tmp_path / "o", faces="all", jobs=2, chunk=3, progress=False))
    assert summary["files"] == len(expected) == summary["ok"] + summary["failed"]
    assert summary["jobs"] == 2
    strip = lambda rows: [{k: v for k, v in r.items()} for r in rows]  # noqa: E731
    assert strip(_jsonl(tmp_path / "o" / "manifest.jsonl")) == strip(_jsonl(out1 / "manifest.jsonl"))
    assert _jsonl(tmp_path / "o" / "failures.jsonl") == _jsonl(out1 / "failures.jsonl")


def test_largest_policy_writes_plain_stem(zoo, tmp_path):
    root, expected = zoo
    src = root / "people"
    s = run_align(AlignConfig(src=src, out=tmp_path / "o", progress=False))
    assert s["files"] == 2 and s["ok"] == 2 and s["faces"] == 2
    assert (tmp_path / "o" / "astronaut.jpg").is_file() and (tmp_path / "o" / "grace_hopper.jpg").is_file()


def test_name_collisions_do_not_overwrite(tmp_path, grace_hopper, astronaut):
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(grace_hopper).save(src / "x.jpg")
    Image.fromarray(astronaut).save(src / "x.png")
    s = run_align(AlignConfig(src=src, out=tmp_path / "o", progress=False))
    assert s["ok"] == 2
    assert sorted(p.name for p in (tmp_path / "o").glob("*.jpg")) == ["x_jpg.jpg", "x_png.jpg"]
    names = output_names([SourceItem(Path("a/b.jpg"), "a/b.jpg", "a"), SourceItem(Path("c.jpg"), "c.jpg", "")])
    assert names == {"a/b.jpg": "a/b", "c.jpg": "c"}


def test_paths_cannot_escape_out(tmp_path, astronaut):
    from PIL import Image

    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError):
        safe_target(out, "../evil.jpg")
    with pytest.raises(ValueError):
        safe_target(out, "/etc/evil.jpg")
    src = tmp_path / "src"
    (src / "people").mkdir(parents=True)
    Image.fromarray(astronaut).save(src / "people" / "astronaut.png")
    Image.fromarray(astronaut).save(src / "top.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, out / "people", target_is_directory=True)  # a trap planted in --out
    from maskkit.pipeline.align import AlignError

    with pytest.raises(AlignError, match="not empty"):  # a folder with other entries: refused (issue 20) ...
        run_align(AlignConfig(src=src, out=out, progress=False))
    s = run_align(AlignConfig(src=src, out=out, progress=False, overwrite=True))  # ... or written beside them
    fails = {r["src"]: r for r in _jsonl(out / "failures.jsonl")}
    assert fails["people/astronaut.png"]["reason"] == "write_error"
    assert "outside" in fails["people/astronaut.png"]["detail"]
    assert list(elsewhere.iterdir()) == []
    assert (out / "top.jpg").is_file()
    assert s["files"] == 2 and s["ok"] == 1 and s["failed"] == 1


def test_aligned_mode_cli(celeb_aligned, tmp_path):
    """``align --aligned`` on one celeb-aligned identity (Barack_Obama, 200 crops): every input
    accounted in the quiet JSON summary, at least 98 % kept. Measured 2026-12-06 (docs/MARGINS.md):
    200 of 200, but one crop, 27.jpg, is kept only because its HOG-found fit's refits move the eyes
    0.103 (FIT_TOL 0.10); when they agree its 5 points sit 13-14 px from the template (limit 12)
    and it is ``not_aligned``, as in 5 of 7 copies with 1-grey-level noise. The others clear their
    limits (template fits at most 8.0 px RMS of 11, faces found at 0.54 or more). The bound was
    99 % (198), 1 crop under that coin flip; 98 % (196) is 3 under it."""
    ident = sorted(p for p in celeb_aligned.iterdir() if p.is_dir())[0]
    n = len([it for it in iter_sources(ident) if not it.error])
    res = CliRunner().invoke(main, ["align", "--src", str(ident), "--out", str(tmp_path / "o"), "--aligned",
                                    "--jobs", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert summary["files"] == n and summary["ok"] >= 0.98 * n


def test_help_and_bad_arguments(tmp_path, zoo):
    root, _ = zoo
    r = CliRunner()
    assert r.invoke(main, ["align", "--help"]).exit_code == 0
    bad_size = r.invoke(main, ["align", "--src", str(root), "--out", str(tmp_path / "o"), "--size", "113x7"])
    assert bad_size.exit_code == 2 and "size" in bad_size.output
    blocker = tmp_path / "file"
    blocker.write_text("x")
    unwritable = r.invoke(main, ["align", "--src", str(root / "people"), "--out", str(blocker / "sub")])
    assert unwritable.exit_code == 1 and "not writable" in unwritable.output
    assert not r.invoke(main, ["align", "--src", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]).exit_code == 0
    up = r.invoke(main, ["align", "--src", str(root), "--out", str(tmp_path / "o"), "--detector", "blazeface",
                         "--upsample", "2"])
    assert up.exit_code == 2 and "upsample" in up.output


def test_fan_unavailable_is_a_clear_error(tmp_path, zoo):
    import importlib.util

    if importlib.util.find_spec("face_alignment") is not None:
        pytest.skip("face-alignment installed here")
    root, _ = zoo
    res = CliRunner().invoke(main, ["align", "--src", str(root / "people"), "--out", str(tmp_path / "o"),
                                    "--detector", "fan"])
    assert res.exit_code == 1 and "face-alignment" in res.output


def test_shards_format_unmasked(zoo, tmp_path):
    """--format shards goes through maskkit.pipeline.synth.run_synth with ratio 0 (FORMAT.md)."""
    import tarfile

    root, _ = zoo
    res = CliRunner().invoke(main, ["align", "--src", str(root / "people"), "--out", str(tmp_path / "s"),
                                    "--format", "shards", "--jobs", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    man = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert man["num_samples"] == 2 and man["num_masked"] == 0 and man["ratio"] == 0.0
    assert man["inputs"]["files"] == man["inputs"]["ok"] + man["inputs"]["failed"] == 2
    with tarfile.open(tmp_path / "s" / man["shards"][0]["name"]) as tf:
        names = tf.getnames()
    assert sum(n.endswith(".jpg") for n in names) == 2 and sum(n.endswith(".json") for n in names) == 2


def test_progress_helpers():
    import io

    from maskkit.util.progress import print_summary, progress_bar, track

    assert list(track(range(5), desc="t", disable=True)) == [0, 1, 2, 3, 4]
    with progress_bar(3, desc="p", disable=False) as bar:
        bar.update(3)
        assert bar.n == 3
    buf = io.StringIO()
    print_summary("run", {"files": 1234, "errors": {"decode_error": 2, "empty": 1}, "img/s": 12.345}, file=buf)
    text = buf.getvalue()
    assert "1,234" in text and "decode_error" in text and "12.35" in text
    assert "3" in text.split("errors")[1].splitlines()[0]  # the errors row sums its reasons


@pytest.fixture()
def small_src(tmp_path, astronaut, grace_hopper):
    """Two faces, one image without a face and one undecodable file."""
    from PIL import Image

    src = tmp_path / "small"
    src.mkdir()
    Image.fromarray(astronaut).save(src / "astronaut.png")
    Image.fromarray(grace_hopper).save(src / "grace.jpg")
    Image.fromarray(np.full((200, 240, 3), 128, np.uint8)).save(src / "blank.png")
    (src / "broken.jpg").write_bytes(b"not a jpeg at all")
    return src


def test_shards_format_uses_the_images_detector_options(small_src, tmp_path, monkeypatch):
    """Both formats detect with the same options (the backend's defaults), so they find the same faces."""
    from maskkit.pipeline import synth
    from maskkit.face.detect import make_detector

    seen = []
    real = synth.run_synth

    def spy(cfg):
        seen.append(cfg)
        return real(cfg)

    monkeypatch.setattr(synth, "run_synth", spy)
    s = run_align(AlignConfig(src=small_src, out=tmp_path / "s", format="shards", progress=False))
    assert seen and seen[0].detector_opts == {}
    assert make_detector("hog", **seen[0].detector_opts).max_side == make_detector("hog").max_side
    im = run_align(AlignConfig(src=small_src, out=tmp_path / "i", progress=False))
    assert s["faces"] == im["faces"] == 2


def test_shards_format_reports_the_images_summary(small_src, tmp_path):
    runner = CliRunner()
    quiet = {}
    for fmt in ("images", "shards"):
        res = runner.invoke(main, ["align", "--src", str(small_src), "--out", str(tmp_path / f"q_{fmt}"),
                                   "--format", fmt, "--jobs", "1", "-q"])
        assert res.exit_code == 0, res.output
        quiet[fmt] = json.loads(res.output.strip().splitlines()[-1])
    assert quiet["shards"] == quiet["images"]
    assert quiet["shards"] == {"seen": 4, "files": 4, "ok": 2, "failed": 2, "skipped": 0, "faces": 2,
                               "faces_rejected": 0, "no_face": 1, "errors": {"decode_error": 1}, "hints": []}
    res = runner.invoke(main, ["align", "--src", str(small_src), "--out", str(tmp_path / "t"),
                               "--format", "shards", "--jobs", "1"])
    assert res.exit_code == 0, res.output
    for row in ("files", "faces written", "no face", "decode_error", "seconds", "img/s"):
        assert row in res.output, row
    assert "align:" in res.output and "synth" not in res.output  # the bar label


def test_shards_rerun_with_other_options_needs_overwrite(small_src, tmp_path):
    runner = CliRunner()
    out = str(tmp_path / "s")
    base = ["align", "--src", str(small_src), "--out", out, "--format", "shards", "--jobs", "1", "-q"]
    assert runner.invoke(main, base).exit_code == 0
    res = runner.invoke(main, base + ["--quality", "80"])
    assert res.exit_code != 0 and "--overwrite" in res.output
    res = runner.invoke(main, base + ["--quality", "80", "--overwrite"])
    assert res.exit_code == 0, res.output
    man = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert man["jpeg_quality"] == 80 and man["num_samples"] == 2


def test_images_rerun_into_another_runs_out(small_src, tmp_path):
    runner = CliRunner()
    out = tmp_path / "o"
    base = ["align", "--src", str(small_src), "--out", str(out), "--jobs", "1", "-q"]
    assert runner.invoke(main, base).exit_code == 0
    assert sorted(p.name for p in out.glob("*.jpg")) == ["astronaut.jpg", "grace.jpg"]
    # identical options: proceeds and rewrites the same files
    res = runner.invoke(main, base)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.glob("*.jpg")) == ["astronaut.jpg", "grace.jpg"]
    # other options: refused, nothing touched
    res = runner.invoke(main, base + ["--faces", "all"])
    assert res.exit_code != 0 and "another run" in res.output and "--overwrite" in res.output
    assert len(_jsonl(out / "manifest.jsonl")) == 2 and (out / "astronaut.jpg").is_file()
    # --overwrite clears the previous run's crops: no stale file remains
    (out / "notes.txt").write_text("mine")
    res = runner.invoke(main, base + ["--faces", "all", "--overwrite"])
    assert res.exit_code == 0, res.output
    names = {p.name for p in out.glob("*.jpg")}
    assert names == {r["out"] for r in _jsonl(out / "manifest.jsonl")}
    # astronaut's detection 0 (left) is an emblem on her suit, rejected as bad_landmarks; 1 is her face
    assert {"astronaut_1.jpg", "grace_0.jpg"} <= names and not {"astronaut.jpg", "grace.jpg"} & names
    assert (out / "notes.txt").read_text() == "mine"
    # a folder with a manifest.jsonl but no run info (another tool or version) is refused too
    (out / "maskkit-run.json").unlink()
    res = runner.invoke(main, base + ["--faces", "all"])
    assert res.exit_code != 0 and "--overwrite" in res.output


def test_non_image_files_are_reported_not_passed_over_silently(tmp_path, astronaut, caplog):
    """Files without an image extension are not inputs, but the walk says how many it left out."""
    import logging

    import cv2

    src = tmp_path / "src" / "person"
    src.mkdir(parents=True)
    cv2.imwrite(str(src / "a.jpg"), astronaut[:, :, ::-1])
    (src / "a.pts").write_text("version: 1\n")
    (src / "notes.txt").write_text("hello\n")
    with caplog.at_level(logging.WARNING, logger="maskkit.io.sources"):
        items = iter_sources(tmp_path / "src")
    assert [it.rel for it in items] == ["person/a.jpg"]
    msgs = [r.getMessage() for r in caplog.records if r.name == "maskkit.io.sources"]
    assert len(msgs) == 1 and "2 file(s)" in msgs[0] and "person/a.pts" in msgs[0]


def test_images_and_shards_never_share_an_out(small_src, tmp_path):
    """An images-mode align into a shard folder, or shards into an images folder, is refused (even
    with --overwrite, which would not remove the other command's files), and nothing is written."""
    runner = CliRunner()
    shards, images = tmp_path / "s", tmp_path / "i"
    assert runner.invoke(main, ["align", "--src", str(small_src), "--out", str(shards), "--format", "shards",
                                "--jobs", "1", "-q"]).exit_code == 0
    assert runner.invoke(main, ["align", "--src", str(small_src), "--out", str(images), "--jobs", "1",
                                "-q"]).exit_code == 0
    before = {d: sorted(p.name for p in d.iterdir()) for d in (shards, images)}
    for cmd in (["align", "--src", str(small_src), "--out", str(shards)],
                ["mask", "--src", str(small_src), "--out", str(shards)],
                ["align", "--src", str(small_src), "--out", str(images), "--format", "shards"],
                ["synth", "--src", str(small_src), "--out", str(images)]):
        for extra in ([], ["--overwrite"]):
            res = runner.invoke(main, cmd + ["--jobs", "1", "-q"] + extra)
            assert res.exit_code != 0 and "another folder" in res.output, (cmd, extra, res.output)
            assert not isinstance(res.exception, (AttributeError, TypeError, KeyError)), res.exception
    assert {d: sorted(p.name for p in d.iterdir()) for d in (shards, images)} == before
