"""Issue 20: ``maskkit mask`` options MaskTheFace users expect, and faces cut by the image edge.

* ``--colour`` / ``--texture`` (beside ``--style`` and ``--seed``): chosen, or drawn per face
  (seeded) from the palettes and templates ``synth`` draws from; a colour or texture a style does
  not come in is one line naming what it does come in. The draws without a choice are those of
  before (synth's bytes: pinned below).
* A face cut by the image edge (``face_outside_image``), which ``align`` keeps, was refused by
  ``mask`` (the whole file failed as ``cannot_fit``); now the visible part of its mask is drawn.

Faces: the astronaut and grace_hopper (dependency-shipped), whole and cut by each image edge.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from maskkit.cli import main
from maskkit.render import COLOURS, PALETTES, STYLES, TEXTURES, CannotFit, MaskRenderer, coverage_check
from zoo import astronaut, faces_tree, grace_hopper


@pytest.fixture(scope="module")
def renderer() -> MaskRenderer:
    return MaskRenderer()


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return faces_tree(tmp_path_factory.mktemp("faces") / "src", per=2)


def _mask(src: Path, out: Path, *extra: str):
    return CliRunner().invoke(main, ["mask", "--src", str(src), "--out", str(out), "-j", "1", "-q", *extra])


def _masked(out: Path) -> list[dict]:
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines() if x.strip()]
    return [r for r in lines if r["masked"]]


def _files(out: Path) -> dict[str, str]:
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and p.name != "maskkit-run.json"}


# ---- colour and texture ---------------------------------------------------------------------------
def test_the_draws_without_a_choice_are_those_of_before(renderer):
    """300 seeds x every style and random: the render parameters drawn without a colour or texture
    are exactly those of the renderer before the options existed (synth draws them: its shard
    bytes are unchanged, ALGORITHM_VERSION stays)."""
    h = hashlib.sha256()
    for style in STYLES + ("random",):
        for seed in range(300):
            h.update(json.dumps(renderer.sample_params(style, np.random.default_rng(seed)), sort_keys=True).encode())
    assert h.hexdigest() == "bda8162b7de72dff32f08b0054e53a9eb468233481fb45a673da54580ae34269"


def test_textures_are_the_templates_own(renderer):
    assert {t.meta.get("texture", "plain") for t in renderer.templates.values()} == set(TEXTURES)
    assert {t.meta.get("texture", "plain") for t in renderer.templates.values() if t.style != "cloth"} == {"plain"}


@pytest.mark.parametrize("style,colour,texture", [
    ("cloth", "navy", "stripes"), ("cloth", None, "dots"), ("surgical", "black", None), ("random", "olive", None),
    ("random", None, "checks"), ("random", "white", "plain"), ("gas", "dark_green", "plain"), ("random", "pink", None),
])
def test_chosen_colour_and_texture_are_kept_and_the_rest_is_drawn(renderer, style, colour, texture):
    """Over 200 seeds every draw has the chosen colour and texture, the style is one that comes in
    them, and what is not chosen still varies; a chosen colour leaves every other draw as it was."""
    styles, colours, templates = set(), set(), set()
    for seed in range(200):
        p = renderer.sample_params(style, np.random.default_rng(seed), colour, texture)
        assert colour is None or p["colour"] == colour
        assert texture is None or p["texture"] == texture
        assert p["colour"] in dict(PALETTES[p["style"]]) and (style == "random" or p["style"] == style)
        styles.add(p["style"]), colours.add(p["colour"]), templates.add(p["template"])
        if colour is not None and texture is None and style != "random":
            free = renderer.sample_params(style, np.random.default_rng(seed))
            assert {k: v for k, v in p.items() if k not in ("colour", "colour2")} == \
                {k: v for k, v in free.items() if k not in ("colour", "colour2")}
    if colour is None:
        assert len(colours) > 1
    if style == "random":
        assert styles == {s for s in STYLES if renderer.choice_error(s, colour, texture) is None}


@pytest.mark.parametrize("style,colour,texture,says", [
    ("surgical", "yellow", None, "surgical masks come in colours light_blue, white, green, sky_blue, black, pink"),
    ("n95", None, "stripes", "n95 masks come in colours white, black, grey, light_blue, green and textures plain"),
    ("random", "olive", "dots", "no mask style comes in olive dots"),
])
def test_a_choice_a_style_does_not_come_in_is_one_line(renderer, src, tmp_path, style, colour, texture, says):
    assert says in renderer.choice_error(style, colour, texture)
    extra = ["--style", style] + (["--colour", colour] if colour else []) + (["--texture", texture] if texture else [])
    res = _mask(src, tmp_path / "out", *extra)
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert says in " ".join(res.stderr.split()) and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # refused before any output


def test_mask_cli_colour_and_texture_seeded(src, tmp_path):
    """`mask --style cloth --colour navy --texture stripes`: every masked face in navy stripes (the
    manifest's params say so); rerun with the same seed: byte-identical files; `--colour black`
    alone (random style, MaskTheFace's `--color` spelling too) keeps every other draw of the
    default run: same styles and templates, only the colour differs."""
    a = tmp_path / "a"
    assert _mask(src, a, "--style", "cloth", "--colour", "navy", "--texture", "stripes", "--seed", "5").exit_code == 0
    rows = _masked(a)
    assert rows and all((r["params"]["colour"], r["params"]["texture"], r["params"]["template"]) ==
                        ("navy", "stripes", "cloth_stripes") for r in rows)
    b = tmp_path / "b"
    assert _mask(src, b, "--style", "cloth", "--colour", "navy", "--texture", "stripes", "--seed", "5").exit_code == 0
    assert _files(a) == _files(b)
    assert _mask(src, tmp_path / "free").exit_code == 0
    assert _mask(src, tmp_path / "black", "--color", "black").exit_code == 0
    free, black = _masked(tmp_path / "free"), _masked(tmp_path / "black")
    assert [(r["src"], r["params"]["style"], r["params"]["template"]) for r in black] == \
        [(r["src"], r["params"]["style"], r["params"]["template"]) for r in free]
    assert {r["params"]["colour"] for r in black} == {"black"} and len({r["params"]["colour"] for r in free}) > 1


# ---- faces cut by the image edge ------------------------------------------------------------------
#: (name, image, crop box) -- each cut leaves eye, nose or mouth points outside the image
CUTS = [("bottom", "astronaut", (0, 0, 512, 150)), ("left", "astronaut", (210, 0, 512, 512)),
        ("right", "astronaut", (0, 0, 245, 512)), ("top", "astronaut", (0, 100, 512, 512)),
        ("left", "grace", (215, 0, 512, 600))]


@pytest.fixture(scope="module")
def cut_faces(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("cut") / "src"
    src.mkdir()
    images = {"astronaut": astronaut(), "grace": grace_hopper()}
    for edge, name, (x0, y0, x1, y1) in CUTS:
        Image.fromarray(images[name][y0:y1, x0:x1]).save(src / f"{name}_{edge}.png")
    return src


def test_a_face_cut_by_the_edge_gets_the_visible_part_of_its_mask(cut_faces, tmp_path, renderer):
    """Five faces cut by the bottom, left, right and top edges (their eye, nose or mouth points
    outside the image): align keeps every one; mask refused each (cannot_fit, face_outside_image)
    and now masks each, naming the edge it crosses; the coverage written covers the visible nose,
    mouth and chin points and leaves the visible eyes clear."""
    from maskkit.render import check_landmarks

    al = CliRunner().invoke(main, ["align", "--src", str(cut_faces), "--out", str(tmp_path / "al"), "-j", "1", "-q"])
    assert al.exit_code == 0 and json.loads(al.output.strip().splitlines()[-1])["ok"] == len(CUTS)
    res = _mask(cut_faces, tmp_path / "m", "--coverage", "--seed", "1")
    summary = json.loads(res.output.strip().splitlines()[-1])
    assert res.exit_code == 0 and summary["ok"] == len(CUTS) and summary["failed"] == 0, res.output
    rows = {r["src"]: r for r in _masked(tmp_path / "m")}
    for edge, name, _ in CUTS:
        r = rows[f"{name}_{edge}.png"]
        img = np.asarray(Image.open(tmp_path / "m" / r["out"]))
        lm = np.asarray(r["landmarks68"])
        with pytest.raises(CannotFit, match="face_outside_image"):  # what mask said before
            check_landmarks(lm, img.shape[:2])
        assert r["params"]["cut_by_edge"] == [edge]
        cov = np.asarray(Image.open(tmp_path / "m" / (r["out"][:-4] + ".mask.png")), np.float32) / 255.0
        check = coverage_check(cov, lm)
        assert check["ok"] and check["unjudged"] > 0, (r["src"], check)  # the points outside are not judged
    # a face whose mask lies wholly outside the image is still refused
    lm = np.asarray(rows["astronaut_left.png"]["landmarks68"]) - [400.0, 0.0]
    with pytest.raises(CannotFit, match="face_outside_image"):
        renderer.render(np.zeros((512, 302, 3), np.uint8), lm, "surgical", np.random.default_rng(0), edge="draw")


def test_synth_still_refuses_faces_cut_by_the_edge(cut_faces, renderer):
    """The renderer's default (what synth uses) is unchanged: such a face is a mask skip there."""
    img = np.asarray(Image.open(cut_faces / "astronaut_left.png").convert("RGB"))
    from maskkit.face.detect import get_detector
    from maskkit.face.selection import find_faces

    face = find_faces(get_detector("hog"), img, "largest")[0]
    with pytest.raises(CannotFit, match="face_outside_image"):
        renderer.render(img, face.landmarks68, "surgical", np.random.default_rng(0))
    assert "cut_by_edge" in renderer.render(img, face.landmarks68, "surgical", np.random.default_rng(0),
                                            edge="draw").params


def test_colour_names_are_the_palettes(renderer):
    """--colour offers exactly the colours some palette holds."""
    assert set(COLOURS) == {c for pal in PALETTES.values() for c, _ in pal}


def test_faces_the_mask_cannot_fit_are_counted_in_failed_images_too(cut_faces, tmp_path, monkeypatch):
    """An image none of whose faces takes a mask is a ``cannot_fit`` failure; its faces still count
    as "faces the mask cannot fit" in the summary (it said "faces not fitted 0" beside
    ``failed: cannot_fit 5``); its ``failures.jsonl`` line says how many (a resume counts them again)."""
    from maskkit.render import MaskRenderer

    def refuse(self, img, lm, *a, **k):
        raise CannotFit("jaw_misses_lip_line", "test: a renderer that fits nothing")

    monkeypatch.setattr(MaskRenderer, "render", refuse)
    res = _mask(cut_faces, tmp_path / "m")
    summary = json.loads(res.output.strip().splitlines()[0])  # then "error: every input failed"
    assert res.exit_code == 1 and summary["ok"] == 0 and summary["errors"] == {"cannot_fit": len(CUTS)}, res.output
    fails = [json.loads(x) for x in (tmp_path / "m" / "failures.jsonl").read_text().splitlines()]
    assert [f["faces_unfit"] for f in fails] == [1] * len(CUTS)
    assert summary["faces_unfit"] == len(CUTS) and summary["faces"] == 0
