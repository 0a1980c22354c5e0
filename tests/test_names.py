"""Issue 12 §2, §3, §9: any file name, any extension alias, every file under --src accounted for,
two inputs never write one file, no output replaced silently, one set of exit codes.

Always-on: the faces are scikit-image's astronaut and matplotlib's grace_hopper (half size, so
the HOG detector takes ~0.05 s per image), written under tricky names: Latin-1 bytes that are not
UTF-8 (through bytes paths), ``.jfif``/``.jpe``/``.jif``, names that differ only in case,
``x.png + x.bmp + x_png.jpg``, ``x_0.jpg`` beside ``x.jpg`` with ``--faces all``, ``x.mask.png``
with ``--coverage``, symlinked folders, an output folder inside the source.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from maskkit.cli import main
from maskkit.pipeline.runner import PROGRESS, RESERVED

#: the accounting files every align/mask run writes (unverified.jsonl only when --aligned kept some;
#: the progress journal only until the run finishes)
ALWAYS_WRITTEN = tuple(n for n in RESERVED if n not in ("unverified.jsonl", PROGRESS))


@pytest.fixture(scope="module")
def faces(astronaut, grace_hopper):
    """Two real faces at half size: A (256x256) and G (300x256)."""
    return np.ascontiguousarray(astronaut[::2, ::2]), np.ascontiguousarray(grace_hopper[::2, ::2])


def _save(root: Path, rel: bytes, rgb: np.ndarray, fmt: str = "JPEG") -> bytes:
    """Write ``rgb`` at ``root/rel`` (``rel`` as bytes, so it may be any name the file system takes)."""
    p = os.fsencode(root) + b"/" + rel
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as fh:
        Image.fromarray(rgb).save(fh, format=fmt)
    return p


def _lines(p: Path) -> list[dict]:
    """JSON lines of ``p``, decoded as strict UTF-8 (a lone surrogate or a bad byte fails here)."""
    text = p.read_bytes().decode("utf-8")
    return [json.loads(x) for x in text.splitlines() if x.strip()]


def _files(out: Path) -> set[bytes]:
    base = os.fsencode(out)
    return {os.path.relpath(os.path.join(dp, f), base) for dp, _, fs in os.walk(base) for f in fs}


def _run(args: list) -> "click.testing.Result":  # noqa: F821
    return CliRunner().invoke(main, [os.fsdecode(a) if isinstance(a, bytes) else str(a) for a in args])


def _assert_utf8(res) -> None:
    res.output.encode("utf-8")  # the console got no lone surrogate


# ------------------------------------------------------------------ §2 names that are not UTF-8

@pytest.fixture()
def latin1_tree(tmp_path, faces):
    a, g = faces
    src = tmp_path / "src"
    _save(src, b"p/caf\xe9.jpg", a)            # a Latin-1 file name
    _save(src, b"p/ok.jpg", g)
    _save(src, b"caf\xe9/x.png", g, "PNG")    # a Latin-1 identity folder
    with open(os.fsencode(src) + b"/p/bad\xe9.jpg", "wb") as fh:  # and one that fails, named so too
        fh.write(b"not a jpeg")
    return src


@pytest.mark.parametrize("command", ["align", "mask"])
def test_names_that_are_not_utf8_are_processed_by_align_and_mask(latin1_tree, tmp_path, command):
    """Was: UnicodeEncodeError partway, one crop written and logged nowhere, exit 1 with a traceback."""
    out = tmp_path / "out"
    res = _run([command, "--src", latin1_tree, "--out", out, "-j", "1", "-q"])
    assert res.exit_code == 0, res.output
    _assert_utf8(res)
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert (summary["seen"], summary["files"], summary["ok"], summary["failed"]) == (4, 4, 3, 1)
    man = _lines(out / "manifest.jsonl")
    [fail] = _lines(out / "failures.jsonl")
    assert (fail["src"], base64.b64decode(fail["src_bytes"]), fail["reason"]) == \
        ("p/bad\ufffd.jpg", b"p/bad\xe9.jpg", "decode_error")
    by_src = {r["src"]: r for r in man}
    assert set(by_src) == {"p/caf\ufffd.jpg", "p/ok.jpg", "caf\ufffd/x.png"}
    assert "src_bytes" not in by_src["p/ok.jpg"]
    for shown, exact in (("p/caf\ufffd.jpg", b"p/caf\xe9.jpg"), ("caf\ufffd/x.png", b"caf\xe9/x.png")):
        r = by_src[shown]
        assert base64.b64decode(r["src_bytes"]) == exact
        written = base64.b64decode(r["out_bytes"])  # the output keeps the input's bytes
        assert written in _files(out) and written.split(b".")[0] == exact.split(b".")[0]
    if command == "align":
        assert by_src["caf\ufffd/x.png"]["identity"] == "caf\ufffd"
    else:  # mask's output previews, Latin-1 names included (was: read_error traceback on the U+FFFD name)
        res = _run(["preview", out, "-o", tmp_path / "sheet.png"])
        assert res.exit_code == 0 and (tmp_path / "sheet.png").stat().st_size > 0, res.output


def test_names_that_are_not_utf8_in_synth_shards(latin1_tree, tmp_path):
    """Shard JSON and the manifest stay valid UTF-8; keys and seeds hash the name's bytes, so a
    valid name keeps the key it always had."""
    from maskkit.io.shard_verify import verify
    from maskkit.io.shards import read_samples
    from maskkit.pipeline.synth import sample_key

    out = tmp_path / "shards"
    res = _run(["synth", "--src", latin1_tree, "--out", out, "--ratio", "0.5", "-j", "1", "-q"])
    assert res.exit_code == 0, res.output
    _assert_utf8(res)
    man = json.loads((out / "manifest.json").read_bytes().decode("utf-8"))
    assert man["classes"] == ["caf\ufffd", "p"]
    assert base64.b64decode(man["classes_bytes"]["caf\ufffd"]) == b"caf\xe9"
    assert man["inputs"]["ok"] == 3 and man["inputs"]["seen"] == 4
    [fail] = _lines(out / "failures.jsonl")
    assert base64.b64decode(fail["src_bytes"]) == b"p/bad\xe9.jpg" and fail["reason"] == "decode_error"
    assert _lines(out / "skipped.jsonl") == []
    got = {}
    for s in read_samples(out):
        meta = s["json"]
        exact = base64.b64decode(meta["src_bytes"]) if "src_bytes" in meta else meta["src"].encode("utf-8")
        assert meta["identity"] == man["classes"][meta["label"]]
        assert s["key"] == sample_key(meta["label"], os.fsdecode(exact), meta["face"])
        got[exact] = s["key"]
    assert set(got) == {b"p/caf\xe9.jpg", b"p/ok.jpg", b"caf\xe9/x.png"}
    # a valid name's key is sha1 of its UTF-8 bytes, as before the change
    assert got[b"p/ok.jpg"].startswith(f"000001_{hashlib.sha1(b'p/ok.jpg').hexdigest()[:12]}_")
    assert verify(out).ok


def test_display_names_round_trip_and_stay_distinct():
    from maskkit.util.names import display_name, name_fields, name_from_fields, unique_display_names

    e9, e8 = os.fsdecode(b"caf\xe9"), os.fsdecode(b"caf\xe8")
    assert display_name(e9) == display_name(e8) == "caf\ufffd"  # display forms collide...
    shown = unique_display_names([e9, e8, "caf\ufffd", "ok"])
    assert len(set(shown.values())) == 4                     # ...class names never do
    assert shown["ok"] == "ok" and shown["caf\ufffd"] == "caf\ufffd"
    for name in (e9, "p/ok.jpg", "caf\ufffd"):  # the last: a valid name that holds U+FFFD itself
        rec = json.loads(json.dumps(name_fields(name), ensure_ascii=False).encode("utf-8"))
        assert name_from_fields(rec) == name


def test_embed_paths_are_text_with_their_bytes(tmp_path, faces):
    """embed's paths/identities are valid UTF-8, the exact bytes beside them; two identity folders
    that display alike stay two identities."""
    from maskkit.training.eval.embed import run_embed

    a, g = faces
    src = tmp_path / "src"
    _save(src, b"caf\xe9/1.jpg", a)
    _save(src, b"caf\xe8/2.jpg", g)

    class MeanColour:  # anything with embed(images, masked) -> (mu, sigma)
        def embed(self, images, masked):
            mu = images.reshape(len(images), -1, 3).mean(1).astype(np.float32)
            return np.concatenate([mu, np.ones((len(mu), 1), np.float32)], 1), None

    run_embed(None, str(src), str(tmp_path / "e.npz"), progress=False, model=MeanColour())
    z = np.load(tmp_path / "e.npz")
    shown = sorted(zip((str(p) for p in z["paths"]), (base64.b64decode(str(b)) for b in z["paths_bytes"])))
    assert shown == [("caf\ufffd/1.jpg", b"caf\xe9/1.jpg"), ("caf\ufffd/2.jpg", b"caf\xe8/2.jpg")]
    ids = [str(i) for i in z["identities"]]
    assert len(set(ids)) == 2 and all(i.encode("utf-8") for i in ids)


def test_pairs_files_may_name_files_that_are_not_utf8(tmp_path, faces):
    """A pairs line naming Latin-1 files loads them; the set's names are text, their bytes beside
    them; a missing one fails with its bytes too."""
    from maskkit.training.eval.evalsets import FaceAligner, load_pairs

    a, g = faces
    root = tmp_path / "root"
    _save(root, b"caf\xe9/1.jpg", a)
    _save(root, b"caf\xe8/2.jpg", g)
    pairs = tmp_path / "pairs.txt"
    pairs.write_bytes(b"caf\xe9/1.jpg caf\xe8/2.jpg 0\ncaf\xe9/1.jpg caf\xe9/9.jpg 1\n")
    ps = load_pairs(pairs, root, FaceAligner("hog"), progress=False)
    assert ps.n_pairs == 1 and ps.names == ["caf\ufffd/1.jpg", "caf\ufffd/2.jpg"]
    assert [base64.b64decode(b) for b in ps.names_bytes] == [b"caf\xe9/1.jpg", b"caf\xe8/2.jpg"]
    missing = [f for f in ps.failures if f["reason"] == "missing"]
    assert [base64.b64decode(f["src_bytes"]) for f in missing] == [b"caf\xe9/9.jpg"]
    json.dumps(ps.failures, ensure_ascii=False).encode("utf-8")  # valid UTF-8 text throughout


# ------------------------------------------------------------------ §2 extension aliases, skipped.jsonl

def test_jpeg_aliases_are_inputs_and_every_other_file_is_skipped_with_a_reason(tmp_path, faces):
    """Was: .jfif/.jpe/.jif left out with one warning line (0 inputs, exit 0)."""
    a, g = faces
    src = tmp_path / "src"
    _save(src, b"p/a.jfif", a)
    _save(src, b"p/b.JPE", g)
    _save(src, b"p/c.jif", a)
    (src / "p" / "notes.txt").write_text("not a face\n")
    for command in ("align", "mask"):
        out = tmp_path / command
        res = _run([command, "--src", src, "--out", out, "-j", "1", "-q"])
        assert res.exit_code == 0, res.output
        s = json.loads(res.output.strip().splitlines()[-1])
        assert (s["seen"], s["files"], s["ok"], s["skipped"]) == (4, 3, 3, 1)
        assert s["seen"] == s["ok"] + s["failed"] + s["skipped"]
        assert [(r["src"], r["reason"]) for r in _lines(out / "skipped.jsonl")] == [("p/notes.txt", "not_an_image")]
    # mask keeps the alias and writes JPEG bytes under it
    assert (tmp_path / "mask" / "p" / "a.jfif").read_bytes()[:2] == b"\xff\xd8"
    assert sorted(p.name for p in (tmp_path / "align" / "p").iterdir()) == ["a.jpg", "b.jpg", "c.jpg"]


def test_links_and_an_output_inside_src_are_skipped_with_reasons(tmp_path, faces):
    """A second link to a walked folder and the output folder inside --src: every file is in
    skipped.jsonl, the real folder's name wins over a link that sorts before it."""
    a, _ = faces
    src = tmp_path / "src"
    _save(src, b"zreal/x.jpg", a)
    os.symlink(src / "zreal", src / "alink", target_is_directory=True)  # sorts before the real folder
    out = src / "out"
    out.mkdir()
    (out / "old.txt").write_text("left over\n")
    # a file that is not maskkit's in --out: refused, or written beside with --overwrite (issue 20)
    assert _run(["align", "--src", src, "--out", out, "-j", "1", "-q"]).exit_code == 1
    res = _run(["align", "--src", src, "--out", out, "-j", "1", "-q", "--overwrite"])
    assert res.exit_code == 0, res.output
    assert (out / "old.txt").read_text() == "left over\n"
    s = json.loads(res.output.strip().splitlines()[-1])
    assert (s["seen"], s["files"], s["ok"], s["skipped"]) == (3, 1, 1, 2)
    assert [r["src"] for r in _lines(out / "manifest.jsonl")] == ["zreal/x.jpg"]
    assert {(r["src"], r["reason"]) for r in _lines(out / "skipped.jsonl")} == {
        ("alink/x.jpg", "duplicate_via_link"), ("out/old.txt", "inside_out")}
    again = _run(["align", "--src", src, "--out", out, "-j", "1", "-q"])  # its own outputs now lie in src/out
    assert again.exit_code == 0 and "already complete" in again.output, again.output
    # synth accounts the same way, in skipped.jsonl and the manifest's inputs
    src2 = tmp_path / "src2"
    _save(src2, b"zreal/x.jpg", a)
    os.symlink(src2 / "zreal", src2 / "alink", target_is_directory=True)
    shards = src2 / "shards"
    shards.mkdir()
    (shards / "old.txt").write_text("left over\n")
    res = _run(["synth", "--src", src2, "--out", shards, "--ratio", "0", "-j", "1", "-q", "--overwrite"])
    assert res.exit_code == 0, res.output
    man = json.loads((shards / "manifest.json").read_text(encoding="utf-8"))
    assert man["classes"] == ["zreal"]
    assert {k: man["inputs"][k] for k in ("seen", "files", "ok", "failed", "skipped")} == \
        {"seen": 3, "files": 1, "ok": 1, "failed": 0, "skipped": 2}
    assert man["inputs"]["skipped_by_reason"] == {"duplicate_via_link": 1, "inside_out": 1}
    assert {(r["src"], r["reason"]) for r in _lines(shards / "skipped.jsonl")} == {
        ("alink/x.jpg", "duplicate_via_link"), ("shards/old.txt", "inside_out")}
    from maskkit.io.shard_verify import verify

    assert verify(shards).ok  # `maskkit stats` checks seen = files + skipped against skipped.jsonl
    (shards / "skipped.jsonl").write_text("")
    assert any("skipped.jsonl has 0 lines" in p for p in verify(shards).problems)


def test_file_links_to_an_input_are_skipped_as_duplicates(tmp_path, faces):
    """Was: a symlinked *file* was a second input (folder links were already de-duplicated):
    ``A/link_x.jpg`` and ``B/stolen.jpg`` (both links to ``A/x.jpg``) were two more samples of one
    photo. Now the real file wins (also over a link whose name sorts first), links to one file
    outside --src keep the first in walk order, a hard link stays an input, and
    seen = ok + failed + skipped holds."""
    from maskkit.io.sources import list_sources

    a, g = faces
    src = tmp_path / "sl"
    _save(src, b"A/x.jpg", a)
    _save(src, b"B/own.jpg", g)
    os.symlink("x.jpg", src / "A" / "link_x.jpg")
    os.symlink("x.jpg", src / "A" / "a_first.jpg")         # sorts before the real file
    os.symlink("../A/x.jpg", src / "B" / "stolen.jpg")     # from another identity
    outside = tmp_path / "elsewhere"
    _save(outside, b"g.jpg", g)
    os.symlink(outside / "g.jpg", src / "B" / "g1.jpg")    # two links to one file outside --src
    (src / "C").mkdir()
    os.symlink(outside / "g.jpg", src / "C" / "g2.jpg")
    os.link(src / "B" / "own.jpg", src / "B" / "hard.jpg")  # a hard link: a separate input
    listing = list_sources(src)
    assert [it.rel for it in listing.items] == ["A/x.jpg", "B/g1.jpg", "B/hard.jpg", "B/own.jpg"]
    assert {(s.rel, s.reason) for s in listing.skipped} == {
        ("A/a_first.jpg", "duplicate_via_link"), ("A/link_x.jpg", "duplicate_via_link"),
        ("B/stolen.jpg", "duplicate_via_link"), ("C/g2.jpg", "duplicate_via_link")}
    assert all("A/x.jpg" in s.detail for s in listing.skipped if s.rel.startswith(("A/", "B/")))
    assert "B/g1.jpg" in next(s.detail for s in listing.skipped if s.rel == "C/g2.jpg")
    for command in ("align", "synth"):
        out = tmp_path / command
        res = _run([command, "--src", src, "--out", out, "-j", "1", "-q"] + (["--ratio", "0"] if command == "synth" else []))
        assert res.exit_code == 0, res.output
        if command == "align":
            s = json.loads(res.output.strip().splitlines()[-1])
        else:
            s = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["inputs"]
        assert (s["seen"], s["files"], s["skipped"]) == (8, 4, 4)
        assert s["seen"] == s["ok"] + s["failed"] + s["skipped"]
        assert sorted((r["src"], r["reason"]) for r in _lines(out / "skipped.jsonl")) == sorted(
            (sk.rel, sk.reason) for sk in listing.skipped)


def test_file_link_loops_are_symlink_loop_not_broken_link(tmp_path, faces):
    """Was: ``loop1.jpg -> loop2.jpg -> loop1.jpg`` (and a link to itself) failed as
    ``broken_link`` ("symbolic link to a missing file"); the documented reason is
    ``symlink_loop``. A link to a missing file stays ``broken_link``; align records both."""
    from maskkit.io.sources import list_sources

    a, _ = faces
    src = tmp_path / "loops"
    _save(src, b"A/x.jpg", a)
    os.symlink("loop2.jpg", src / "A" / "loop1.jpg")
    os.symlink("loop1.jpg", src / "A" / "loop2.jpg")
    os.symlink("self.jpg", src / "A" / "self.jpg")
    os.symlink("gone.jpg", src / "A" / "dangling.jpg")
    listing = list_sources(src)
    want = {"A/dangling.jpg": "broken_link", "A/loop1.jpg": "symlink_loop", "A/loop2.jpg": "symlink_loop",
            "A/self.jpg": "symlink_loop", "A/x.jpg": None}
    assert {it.rel: it.error for it in listing.items} == want and not listing.skipped
    assert "loop" in next(it.detail for it in listing.items if it.rel == "A/self.jpg")
    out = tmp_path / "al"
    res = _run(["align", "--src", src, "--out", out, "-j", "1", "-q"])
    assert res.exit_code == 0, res.output
    assert {r["src"]: r["reason"] for r in _lines(out / "failures.jsonl")} == {
        k: v for k, v in want.items() if v}


def test_loose_files_never_join_a_folder_named_root(tmp_path, faces, caplog):
    """Was: files directly in --src became class ``_root`` and merged with a real ``_root/``
    folder (weird2: 4 samples under one label). Now they take ``_root~2``; without such a folder
    they stay ``_root``."""
    from maskkit.io.shard_verify import verify
    from maskkit.io.shards import read_samples
    from maskkit.pipeline.synth.plan import loose_class_name

    assert loose_class_name(["p", "q"]) == "_root"
    assert loose_class_name(["_ROOT", "_root~2"]) == "_root~3"  # compared casefolded, like output names
    a, g = faces
    src = tmp_path / "weird2"
    _save(src, b"_root/a.jpg", a)
    _save(src, b"_root/b.jpg", g)
    _save(src, b"top.jpg", g)
    _save(src, b"p/c.jpg", a)
    out = tmp_path / "shards"
    res = _run(["synth", "--src", src, "--out", out, "--ratio", "0", "-j", "1", "-q"])
    assert res.exit_code == 0, res.output
    man = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert man["classes"] == ["_root", "_root~2", "p"]
    assert {c: v["samples"] for c, v in man["per_class"].items()} == {"_root": 2, "_root~2": 1, "p": 1}
    by_src = {s["json"]["src"]: (s["json"]["label"], s["json"]["identity"]) for s in read_samples(out)}
    assert by_src == {"_root/a.jpg": (0, "_root"), "_root/b.jpg": (0, "_root"), "top.jpg": (1, "_root~2"),
                      "p/c.jpg": (2, "p")}
    assert verify(out).ok
    (src / "_root" / "a.jpg").unlink()
    (src / "_root" / "b.jpg").unlink()
    (src / "_root").rmdir()
    res = _run(["synth", "--src", src, "--out", tmp_path / "plain", "--ratio", "0", "-j", "1", "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "plain" / "manifest.json").read_text())["classes"] == ["_root", "p"]
    # said at run time (a warning), not only in the docs: loose files form one identity
    said = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "1 file(s) directly in" in said and "form one more identity, class '_root', beside the 1 identity" in said
    (src / "p" / "c.jpg").unlink()
    (src / "p").rmdir()
    caplog.clear()
    res = _run(["synth", "--src", src, "--out", tmp_path / "flat", "--ratio", "0", "-j", "1", "-q"])
    assert res.exit_code == 0, res.output
    assert "all 1 input(s) lie directly in" in " ".join(r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------ §3 output names

def _outs(out: Path) -> list[str]:
    return [r["out"] for r in _lines(out / "manifest.jsonl")]


def _casefold_unique(names) -> bool:
    names = list(names)
    return len({n.casefold() for n in names}) == len(names)


def test_align_output_names_never_collide(tmp_path, faces):
    """Was: x.png folded to x_png.jpg, the name of the real input x_png.jpg (one crop lost);
    X.jpg and x.jpg to X_jpg.jpg and x_jpg.jpg (one file on a case-insensitive disk)."""
    a, g = faces
    src = tmp_path / "fold"
    _save(src, b"x.jpg", a)
    _save(src, b"x.png", g, "PNG")
    _save(src, b"x_png.jpg", np.ascontiguousarray(a[:, ::-1]))
    out = tmp_path / "o1"
    assert _run(["align", "--src", src, "--out", out, "-j", "1", "-q"]).exit_code == 0
    names = _outs(out)
    assert len(names) == 3 and _casefold_unique(names)
    assert dict(zip((r["src"] for r in _lines(out / "manifest.jsonl")), names))["x_png.jpg"] == "x_png.jpg"
    crops = [np.asarray(Image.open(out / n)) for n in names]
    assert all(np.abs(crops[i].astype(int) - crops[j]).mean() > 5 for i in range(3) for j in range(i))

    src = tmp_path / "case"
    _save(src, b"X.jpg", a)
    _save(src, b"x.jpg", g)
    _save(src, b"x_0.jpg", np.ascontiguousarray(a[:, ::-1]))
    for faces_opt in ("largest", "all"):
        out = tmp_path / f"o-{faces_opt}"
        assert _run(["align", "--src", src, "--out", out, "--faces", faces_opt, "-j", "1", "-q"]).exit_code == 0
        names = _outs(out)
        # + the accounting files (manifest, failures, rejected, skipped, run info)
        assert _casefold_unique(names) and len(_files(out)) == len(names) + len(ALWAYS_WRITTEN)
        assert {r["src"] for r in _lines(out / "manifest.jsonl")} == {"X.jpg", "x.jpg", "x_0.jpg"}


def test_mask_output_names_never_collide(tmp_path, faces):
    """Was: x.png and x.bmp both written to x.png (one photo lost, both in the manifest); with
    --coverage the coverage of x.png written over the real input x.mask.png."""
    a, g = faces
    src = tmp_path / "src"
    _save(src, b"x.png", a, "PNG")
    _save(src, b"x.bmp", g, "BMP")
    _save(src, b"x_png.jpg", g)
    _save(src, b"x.jpg", a)
    _save(src, b"y.png", a, "PNG")
    _save(src, b"y.mask.png", g, "PNG")
    _save(src, b"Z.jpg", a)
    _save(src, b"z.jpg", g)
    out = tmp_path / "out"
    res = _run(["mask", "--src", src, "--out", out, "--coverage", "-j", "1", "-q"])
    assert res.exit_code == 0, res.output
    recs = _lines(out / "manifest.jsonl")
    out_of = {r["src"]: r["out"] for r in recs}
    assert len(out_of) == 8 and _casefold_unique(out_of.values())
    cover = [n.rsplit(".", 1)[0] + ".mask.png" for n in out_of.values()]
    assert _casefold_unique(list(out_of.values()) + cover)
    assert out_of["y.mask.png"] == "y.mask.png"  # the real input keeps its name
    for rel, name in out_of.items():  # each output is its own input's photo (A 256x256, G 300x256)
        want = Image.open(src / rel).size
        got = Image.open(out / name)
        assert got.size == want and got.mode == "RGB", (rel, name)
        cov = Image.open(out / (name.rsplit(".", 1)[0] + ".mask.png"))
        assert cov.mode == "L" and cov.size == want
    assert len(_files(out)) == 2 * 8 + len(ALWAYS_WRITTEN)


def test_plan_output_names_property():
    """On random name sets: every written file (faces 0..3, coverage) is unique under casefold,
    a name no other input claims stays the input's own, and the plan depends only on the set."""
    from maskkit.pipeline.naming import name_key, plan_output_names

    rng = np.random.default_rng(0)
    stems = ["x", "X", "x_0", "x_png", "x_jpg", "x.mask", "y~2", "x_jpg_0"]
    exts = [".jpg", ".JPG", ".png", ".bmp", ".mask.png"]
    for trial in range(300):
        rels = sorted({f"{'d/' if rng.random() < 0.3 else ''}{rng.choice(stems)}{rng.choice(exts)}"
                       for _ in range(rng.integers(1, 9))})
        multi = bool(trial % 2)
        coverage = not multi and trial % 4 == 0
        ext = (lambda r: ".jpg") if trial % 3 else (lambda r: Path(r).suffix if Path(r).suffix.lower() in (".jpg", ".png") else ".png")
        extras = (".mask.png",) if coverage else ()
        plan = plan_output_names(rels, ext, extras=extras, multi=multi, reserved=("manifest.jsonl",))
        assert plan == plan_output_names(list(reversed(rels)), ext, extras=extras, multi=multi,
                                         reserved=("manifest.jsonl",))
        files = []
        for rel, base in plan.items():
            files += [f"{base}_{k}{ext(rel)}" for k in range(4)] if multi else [base + ext(rel)]
            files += [base + e for e in extras]
        assert len({name_key(f) for f in files}) == len(files), (rels, plan)


# ------------------------------------------------------------------ §9 exit codes

def test_exit_codes_are_the_same_for_every_command(tmp_path, faces):
    """2 with one message when --src holds no input (was: align/mask exit 0 with a table of zeros,
    synth pointing at an empty failures file); 1 when every input failed (after the summary); 0
    and "already complete" when a finished run is run again."""
    a, _ = faces
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no faces here\n")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "b1.jpg").write_bytes(b"not a jpeg")
    (bad / "b2.png").write_bytes(b"\x89PNG broken")
    good = tmp_path / "good"
    _save(good, b"p/a.jpg", a)
    _save(good, b"q/a.jpg", a)
    cmds = {"align": [], "mask": [], "synth": ["--ratio", "0.5"], "align-shards": ["--format", "shards"]}
    for name, extra in cmds.items():
        cmd = name.split("-")[0]
        out = tmp_path / f"{name}-empty"
        res = _run([cmd, "--src", empty, "--out", out, "-j", "1", "-q"] + extra)
        assert res.exit_code == 2, (cmd, res.output)
        assert f"no input file under --src {empty} (1 file seen, not an input: not_an_image 1, e.g. readme.txt)" \
            in res.output, (cmd, res.output)
        assert not out.exists()  # nothing is written

        out = tmp_path / f"{name}-bad"
        res = _run([cmd, "--src", bad, "--out", out, "-j", "1"] + extra)
        assert res.exit_code == 1, (cmd, res.output)
        assert "every input failed" in res.output and "decode_error" in res.output  # after the summary
        fails = _lines(out / "failures.jsonl")
        assert sorted(f["src"] for f in fails) == ["b1.jpg", "b2.png"]

        out = tmp_path / f"{name}-good"
        first = _run([cmd, "--src", good, "--out", out, "-j", "1", "-q"] + extra)
        assert first.exit_code == 0, (cmd, first.output)
        stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
        again = _run([cmd, "--src", good, "--out", out, "-j", "1", "-q"] + extra)
        assert again.exit_code == 0 and "already complete" in again.output, (cmd, again.output)
        assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamp  # nothing redone
        if cmd == "align":  # the finished run's summary, as -q prints it
            assert json.loads(next(x for x in again.output.splitlines() if x.startswith("{")))["ok"] == 2
        _save(good, b"p/b.jpg", a)  # a new input: no longer complete
        res = _run([cmd, "--src", good, "--out", out, "-j", "1", "-q"] + extra)
        os.unlink(os.fsencode(good) + b"/p/b.jpg")
        assert "already complete" not in res.output, (cmd, res.output)
        if name in ("synth", "align-shards"):  # shards: never two input sets in one folder
            assert res.exit_code == 1 and "--overwrite" in res.output, res.output
        else:  # align/mask redo the run with the same options
            assert res.exit_code == 0 and json.loads(res.output.splitlines()[-1])["ok"] == 3, res.output


# ------------------------------------------------------------------ §9 overwrites

@pytest.fixture(scope="module")
def two_faces_and_shards(tmp_path_factory, faces):
    """Two identity folders (one face each) and their synth shard set (ratio 0.5)."""
    a, g = faces
    root = tmp_path_factory.mktemp("two")
    src = root / "src"
    _save(src, b"p/a.jpg", a)
    _save(src, b"q/g.jpg", g)
    res = _run(["synth", "--src", src, "--out", root / "shards", "-j", "1", "-q"])
    assert res.exit_code == 0, res.output
    return src, root / "shards"


def test_train_refuses_a_folder_holding_a_run(tmp_path, two_faces_and_shards):
    """Was: `train --out runs/x` silently replaced the run; its old eval/ records stayed and showed
    in eval --compare beside the new model."""
    _, shards = two_faces_and_shards
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"old weights")
    (run / "config.json").write_text("{}")
    (run / "eval").mkdir()
    (run / "eval" / "lfw-verification-maskone.json").write_text("{}")
    (run / "notes.txt").write_text("mine\n")
    tiny = ["--backbone", "r18", "--width", "0.25", "--batch-size", "2", "--max-steps", "1", "--num-workers", "0",
            "--amp", "none", "--device", "cpu", "--no-progress", "--set", "tensorboard=false"]
    res = _run(["train", "--data", shards, "--out", run] + tiny)
    assert res.exit_code == 1 and "--resume" in res.output and "--overwrite" in res.output, res.output
    assert (run / "checkpoints" / "last.pt").read_bytes() == b"old weights"
    # --overwrite with data that does not open keeps the old run
    res = _run(["train", "--data", tmp_path / "nothing", "--out", run, "--overwrite"] + tiny)
    assert res.exit_code == 1 and "is kept" in res.output, res.output
    assert (run / "eval").is_dir()
    res = _run(["train", "--data", shards, "--out", run, "--resume", "--overwrite"] + tiny)
    assert res.exit_code == 2 and "give one of them" in res.output, res.output
    # --overwrite: the old run's files go (eval/ records included), the new run is written
    res = _run(["train", "--data", shards, "--out", run, "--overwrite"] + tiny)
    assert res.exit_code == 0, res.output
    assert not (run / "eval").exists() and (run / "notes.txt").read_text() == "mine\n"
    assert (run / "checkpoints" / "last.pt").read_bytes() != b"old weights"
    assert json.loads((run / "config.json").read_text())["backbone"] == "r18"


def test_file_outputs_are_never_replaced_silently(tmp_path, two_faces_and_shards):
    """embed, export, export-rec and preview -o refuse an existing output without --overwrite."""
    src, shards = two_faces_and_shards
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for cmd, target in (
        (["embed", "--model", model_dir, "--src", src, "--out"], tmp_path / "e.npz"),
        (["export", "--model", model_dir, "--onnx"], tmp_path / "m.onnx"),
        (["preview", src, "-o"], tmp_path / "sheet.png"),
    ):
        target.write_bytes(b"precious")
        res = _run(cmd + [target])
        assert res.exit_code == 1 and "already exists" in res.output and "--overwrite" in res.output, res.output
        assert target.read_bytes() == b"precious"
    res = _run(["preview", src, "-o", tmp_path / "sheet.png", "--overwrite", "--n", "1", "--styles", "surgical"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "sheet.png").read_bytes()[:4] == b"\x89PNG"

    rec = tmp_path / "rec"
    assert _run(["export-rec", shards, rec]).exit_code == 0
    before = (rec / "train.rec").read_bytes()
    res = _run(["export-rec", shards, rec, "--only", "plain"])
    assert res.exit_code == 1 and "--overwrite" in res.output, res.output
    assert (rec / "train.rec").read_bytes() == before
    assert _run(["export-rec", shards, rec, "--only", "plain", "--overwrite"]).exit_code == 0
    assert (rec / "train.rec").read_bytes() != before


def test_synth_preview_is_never_replaced_silently(tmp_path, two_faces_and_shards, monkeypatch):
    """synth --preview FILE refuses an existing FILE without --overwrite, before any face is
    decoded (no shard, no manifest); a finished run found again stays "already complete" (exit 0)
    and leaves the preview alone. Before the fix the file was replaced at the end of the run."""
    import maskkit.pipeline.synth.run as synth_run

    src, _ = two_faces_and_shards
    sheet = tmp_path / "sheet.png"
    sheet.write_bytes(b"precious")
    out = tmp_path / "shards"
    started = []
    real = synth_run._results
    monkeypatch.setattr(synth_run, "_results", lambda *a, **k: started.append(1) or real(*a, **k))
    res = _run(["synth", "--src", src, "--out", out, "-j", "1", "-q", "--preview", sheet])
    assert res.exit_code == 1 and f"{sheet} already exists" in " ".join(res.output.split()), res.output
    assert "--overwrite" in res.output and "Traceback" not in res.output
    assert sheet.read_bytes() == b"precious" and started == []
    assert not (out / "manifest.json").exists() and not list(out.glob("*.tar"))
    res = _run(["synth", "--src", src, "--out", out, "-j", "1", "-q", "--preview", sheet, "--overwrite"])
    assert res.exit_code == 0, res.output
    assert sheet.read_bytes()[:4] == b"\x89PNG" and started == [1]
    stamp = sheet.stat().st_mtime_ns
    res = _run(["synth", "--src", src, "--out", out, "-j", "1", "-q", "--preview", sheet])
    assert res.exit_code == 0 and "already complete" in res.output, res.output
    assert sheet.stat().st_mtime_ns == stamp
