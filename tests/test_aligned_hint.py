"""Issue 12 §5, a forgotten ``--aligned``: ``align``, ``mask`` and ``synth`` print one hint in their
summary when the inputs look like ArcFace-aligned crops -- also when every face is found (was:
only when some crop-sized inputs had no face, so a set of crops HOG reads well got no hint and
was silently cropped a second time).

Always-on: the crops are made by ``maskkit.face.align`` from scikit-image's astronaut and
matplotlib's grace_hopper (HOG finds both faces in their 112x112 crops); loose crops of the same
faces (a square twice the face box, resized to 112x112) are the negative case.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from maskkit.cli import main


def _face(rgb: np.ndarray):
    from maskkit.face.detect import get_detector
    from maskkit.face.selection import find_faces

    faces = find_faces(get_detector("hog"), rgb, "largest")
    assert faces and (faces[0].fit is None or faces[0].fit.ok)
    return faces[0]


@pytest.fixture(scope="module")
def crops(astronaut, grace_hopper):
    """``{"aligned": [...], "loose": [...]}``: 112x112 crops of the two faces."""
    import cv2

    from maskkit.face.align import align_face

    out: dict[str, list[np.ndarray]] = {"aligned": [], "loose": []}
    for rgb in (astronaut, grace_hopper):
        f = _face(rgb)
        out["aligned"].append(align_face(rgb, f.landmarks68, (112, 112)).image)
        x0, y0, x1, y1 = f.box
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0)  # a square twice the box
        pad = cv2.copyMakeBorder(rgb, 400, 400, 400, 400, cv2.BORDER_REPLICATE)
        sq = pad[int(cy - half) + 400:int(cy + half) + 400, int(cx - half) + 400:int(cx + half) + 400]
        out["loose"].append(cv2.resize(sq, (112, 112), interpolation=cv2.INTER_AREA))
    return out


def _tree(root: Path, images: list[np.ndarray]) -> Path:
    for i, im in enumerate(images):
        (root / f"id{i}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(root / f"id{i}" / "a.png")  # PNG: the crop's exact pixels
    return root


def test_on_template_separates_aligned_from_loose_crops(crops, astronaut):
    """The per-input evidence: the aligned crops' faces sit on the template of their own frame
    (112x112), loose crops' and the full photo's do not."""
    from maskkit.pipeline.hints import crop_evidence, on_template

    for im in crops["aligned"]:
        assert on_template(im.shape, _face(im).landmarks68)
        assert crop_evidence(im.shape, [_face(im).landmarks68], no_face=False) == \
            {"crop_sized": 1, "crop_sized_no_face": 0, "on_template": 1, "aligned_size": 1}
    for im in crops["loose"]:
        assert not on_template(im.shape, _face(im).landmarks68)
    assert not on_template(astronaut.shape, _face(astronaut).landmarks68)


def test_hint_rule():
    """The run's decision: the no-face rule of maskkit.face.crop_check.aligned_hint first, then
    "at least half of the inputs have a face on the template"."""
    from maskkit.pipeline.hints import forgotten_aligned_hint

    assert forgotten_aligned_hint({"files": 0}) is None
    assert forgotten_aligned_hint({"files": 10, "crop_sized": 10, "on_template": 4}) is None
    hint = forgotten_aligned_hint({"files": 10, "crop_sized": 10, "on_template": 5, "aligned_size": 10})
    assert hint and "add --aligned" in hint and "5 of 10" in hint and "exactly 112x112" in hint
    no_face = forgotten_aligned_hint({"files": 60, "crop_sized": 60, "crop_sized_no_face": 5})
    assert no_face and "had no face found" in no_face


def _hints(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("hint:")]


@pytest.mark.parametrize("command", ["align", "mask", "synth"])
def test_forgotten_aligned_hint_when_every_face_is_found(crops, tmp_path, command):
    """Aligned crops, every face found: one hint line after the summary (and in the summary
    dict / the manifest's ``hints``). Loose crops of the same faces and a run with --aligned:
    none."""
    extra = ["--ratio", "0.5"] if command == "synth" else []
    runs = {}
    for kind, flags in (("aligned", []), ("loose", []), ("aligned", ["--aligned"])):
        name = kind + "".join(flags)
        src = _tree(tmp_path / f"src-{kind}", crops[kind])
        out = tmp_path / f"out-{name}"
        res = CliRunner().invoke(main, [command, "--src", str(src), "--out", str(out), "-j", "1"] + extra + flags)
        assert res.exit_code == 0, res.output
        runs[name] = res.output
        if command == "synth":
            man = json.loads((out / "manifest.json").read_text())
            assert man["inputs"]["ok"] == 2, man["inputs"]  # every face found
            runs[name + ":recorded"] = man.get("hints", [])
        else:
            assert (out / "failures.jsonl").read_text() == "", "every face found"
    hints = _hints(runs["aligned"])
    assert len(hints) == 1, runs["aligned"]
    assert "2 of 2 inputs" in hints[0] and "add --aligned" in hints[0]
    assert runs["aligned"].rindex("hint:") > runs["aligned"].rindex("seen")  # after the summary table
    assert _hints(runs["loose"]) == [] and _hints(runs["aligned--aligned"]) == []
    if command == "synth":
        assert len(runs["aligned:recorded"]) == 1 and runs["loose:recorded"] == []


def test_quiet_align_and_mask_report_the_hint_in_their_json(crops, tmp_path):
    src = _tree(tmp_path / "src", crops["aligned"])
    for command in ("align", "mask"):
        res = CliRunner().invoke(main, [command, "--src", str(src), "--out", str(tmp_path / command), "-j", "1", "-q"])
        assert res.exit_code == 0, res.output
        s = json.loads(res.output.strip().splitlines()[-1])
        assert s["ok"] == 2 and len(s["hints"]) == 1 and "add --aligned" in s["hints"][0]
