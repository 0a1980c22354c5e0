"""A damaged ``manifest.json`` of a shard set (a torn write, an empty object, another JSON value):
every command that reads it (``stats``, ``export-rec``, ``train``, ``preview``) stops with one
line naming the file and a nonzero exit -- before the fix: JSONDecodeError / KeyError /
AttributeError tracebacks, or a message that did not name the file.

The set is made here by ``synth --aligned`` from faces shipped in dependencies (scikit-image's
astronaut, matplotlib's Grace Hopper), aligned to 112x112 by maskkit's aligner.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def shard_set(astronaut, grace_hopper, tmp_path_factory) -> Path:
    import cv2

    from maskkit.pipeline.synth import SynthConfig, run_synth
    from maskkit.training.eval.evalsets import FaceAligner

    tmp = tmp_path_factory.mktemp("man")
    al = FaceAligner()
    for name, photo in (("astronaut", astronaut), ("grace_hopper", grace_hopper)):
        crop, _, _ = al(photo)
        (tmp / "src" / name).mkdir(parents=True)
        for k in range(4):
            img = crop[:, ::-1] if k % 2 else crop
            img = np.clip(img.astype(int) + 6 * (k // 2), 0, 255).astype(np.uint8)
            cv2.imwrite(str(tmp / "src" / name / f"{k}.png"), np.ascontiguousarray(img[:, :, ::-1]))
    out = tmp / "shards"
    man = run_synth(SynthConfig(src=tmp / "src", out=out, aligned=True, ratio=0.5, shard_samples=100,
                                progress=False)).manifest
    assert man["num_samples"] == 8
    return out


DAMAGE = {"torn-write": "garbage{", "empty-object": "{}", "array": "[]", "empty-file": "",
          "classes-not-a-list": json.dumps({"classes": "ab", "shards": []}),
          "shard-entry-not-an-object": json.dumps({"classes": ["a"], "shards": ["train-000000.tar"]})}


def _commands(d: Path, tmp: Path) -> dict[str, list[str]]:
    return {"stats": ["stats", str(d)],
            "export-rec": ["export-rec", str(d), "-o", str(tmp / "rec")],
            "train": ["train", "--data", str(d), "--out", str(tmp / "run"), "--max-steps", "1"],
            "preview": ["preview", str(d), "-o", str(tmp / "p.png")]}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_read_manifest_raises_one_error_naming_the_file(shard_set, tmp_path, damage):
    from maskkit.io.shards import ManifestError, read_manifest

    d = tmp_path / "set"
    shutil.copytree(shard_set, d)
    (d / "manifest.json").write_text(DAMAGE[damage])
    with pytest.raises(ManifestError) as ei:
        read_manifest(d)
    msg = str(ei.value)
    assert msg.startswith(str(d / "manifest.json")) and "\n" not in msg, msg
    assert read_manifest(shard_set)["classes"] == ["astronaut", "grace_hopper"]  # the intact set reads


# preview copes without a shard list (it then reads every *.tar: test_preview_still_reads_a_bare_manifest),
# so '{}' is no damage to it
@pytest.mark.parametrize("command,damage", [(c, d) for c in ("stats", "export-rec", "train", "preview")
                                            for d in ("torn-write", "empty-object", "array")
                                            if (c, d) != ("preview", "empty-object")])
def test_every_command_says_one_line_naming_the_damaged_manifest(shard_set, tmp_path, damage, command):
    from click.testing import CliRunner

    from maskkit.cli import main

    d = tmp_path / "set"
    shutil.copytree(shard_set, d)
    (d / "manifest.json").write_text(DAMAGE[damage])
    res = CliRunner().invoke(main, _commands(d, tmp_path)[command])
    assert res.exit_code not in (0, None) and isinstance(res.exception, SystemExit), \
        (res.output, res.exc_info)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(d / "manifest.json") in lines[0], res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "run").exists() and not (tmp_path / "rec" / "train.rec").exists()


def test_preview_still_reads_a_bare_manifest(shard_set, tmp_path):
    """A manifest without a shard list (an object) is not damage for preview: it takes every *.tar."""
    from click.testing import CliRunner

    from maskkit.cli import main

    d = tmp_path / "set"
    shutil.copytree(shard_set, d)
    (d / "manifest.json").write_text(json.dumps({"format": "maskkit-shards", "version": 1}))
    res = CliRunner().invoke(main, _commands(d, tmp_path)["preview"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "p.png").is_file()


# ---- hand-edited / damaged fields: export-rec refuses what stats reports (tryout 5 §6, §8) ----
def _edit_version(m): m["version"] = 99
def _edit_format(m): m["format"] = "other"
def _edit_no_shards(m): m["shards"] = []
def _edit_negative_samples(m): m["shards"][0]["samples"] = -5
def _edit_class_twice(m): m["classes"] = m["classes"] + m["classes"][:1]
def _edit_fewer_classes(m): m["classes"] = m["classes"][:1]
def _edit_shard_outside(m): m["shards"][0]["name"] = "../other/" + m["shards"][0]["name"]


EDITS = {"version-99": _edit_version, "format-other": _edit_format, "shards-empty": _edit_no_shards,
         "samples-negative": _edit_negative_samples,
         "class-twice": _edit_class_twice, "fewer-classes-than-labels": _edit_fewer_classes,
         "shard-outside-the-set": _edit_shard_outside}


def _edited(shard_set: Path, tmp_path: Path, edit) -> Path:
    d = tmp_path / "set"
    shutil.copytree(shard_set, d)
    shutil.copytree(shard_set, tmp_path / "other")  # what '../other/<shard>' would reach
    m = json.loads((d / "manifest.json").read_text())
    edit(m)
    (d / "manifest.json").write_text(json.dumps(m))
    return d


@pytest.mark.parametrize("edit", list(EDITS))
def test_export_rec_refuses_every_set_stats_reports_as_a_mismatch(shard_set, tmp_path, edit):
    """Before: stats said MISMATCH (or train refused) but export-rec exported (a 0-image train.rec
    for 'shards': [], property '6,7,7' for 112x112 faces, 3 classes for 2) or raised IndexError."""
    from click.testing import CliRunner

    from maskkit.cli import main

    d = _edited(shard_set, tmp_path, EDITS[edit])
    cmds = _commands(d, tmp_path)
    stats = CliRunner().invoke(main, cmds["stats"])
    assert stats.exit_code not in (0, None) and "Traceback" not in stats.output, stats.output
    res = CliRunner().invoke(main, cmds["export-rec"])
    assert res.exit_code not in (0, None) and isinstance(res.exception, SystemExit), (res.output, res.exc_info)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(d) in lines[0], res.output
    assert not (tmp_path / "rec" / "train.rec").exists()


def test_export_rec_without_verify_refuses_labels_past_the_classes_in_one_line(shard_set, tmp_path):
    """--no-verify, a manifest listing 1 class for labels 0 and 1: before, IndexError traceback."""
    from click.testing import CliRunner

    from maskkit.cli import main

    d = _edited(shard_set, tmp_path, _edit_fewer_classes)
    res = CliRunner().invoke(main, _commands(d, tmp_path)["export-rec"] + ["--no-verify"])
    assert res.exit_code not in (0, None) and isinstance(res.exception, SystemExit), (res.output, res.exc_info)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "label 1" in lines[0] and "1 classes" in lines[0], res.output
    assert not (tmp_path / "rec" / "train.rec").exists()


def test_export_rec_checks_the_image_size_against_the_faces(shard_set, tmp_path):
    """'image_size' [128, 128] (a valid size) for 112x112 faces: property would state 128,128;
    refused in one line even with --no-verify (stats without --decode cannot see it)."""
    from click.testing import CliRunner

    from maskkit.cli import main

    d = _edited(shard_set, tmp_path, lambda m: m.update(image_size=[128, 128]))
    res = CliRunner().invoke(main, _commands(d, tmp_path)["export-rec"] + ["--no-verify"])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code not in (0, None) and len(lines) == 1 and "112x112" in lines[0], res.output
    assert not (tmp_path / "rec" / "train.rec").exists()
    ok = CliRunner().invoke(main, ["export-rec", str(shard_set), "-o", str(tmp_path / "rec2"), "-q"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "rec2" / "property").read_text() == "2,112,112\n"


@pytest.mark.parametrize("name", ["../other/train-000000.tar", "/etc/passwd", ".."])
def test_read_manifest_refuses_a_shard_outside_the_set_folder(shard_set, tmp_path, name):
    from maskkit.io.shards import ManifestError, read_manifest

    d = _edited(shard_set, tmp_path, lambda m: m["shards"][0].update(name=name))
    with pytest.raises(ManifestError, match="not a file name inside the set folder"):
        read_manifest(d)


@pytest.mark.parametrize("edit", ["version-99", "format-other", "shards-empty", "samples-negative",
                                  "class-twice"])
def test_read_manifest_refuses_structurally_wrong_fields(shard_set, tmp_path, edit):
    """The shared reader (train, stats, export-rec, preview) refuses these in one line naming the
    file (before: train trained on 'shards': [] and a duplicated class; export-rec exported all)."""
    from maskkit.io.shards import ManifestError, read_manifest

    d = _edited(shard_set, tmp_path, EDITS[edit])
    with pytest.raises(ManifestError) as ei:
        read_manifest(d)
    assert str(ei.value).startswith(str(d / "manifest.json")) and "\n" not in str(ei.value)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_preview_of_a_damaged_shard_is_one_line_naming_it(shard_set, tmp_path, damage):
    """A shard cut short, or one replaced by random bytes: before, a tarfile.ReadError traceback."""
    from click.testing import CliRunner

    from maskkit.cli import main

    d = tmp_path / "set"
    shutil.copytree(shard_set, d)
    shard = d / json.loads((d / "manifest.json").read_text())["shards"][0]["name"]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 3] if damage == "truncated"
                      else np.random.default_rng(0).bytes(1000))
    res = CliRunner().invoke(main, _commands(d, tmp_path)["preview"])
    assert res.exit_code not in (0, None) and isinstance(res.exception, SystemExit), (res.output, res.exc_info)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(shard) in lines[0] and "unreadable" in lines[0], res.output
    assert not (tmp_path / "p.png").exists()
