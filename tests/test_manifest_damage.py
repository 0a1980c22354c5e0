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
