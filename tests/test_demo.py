"""`maskkit demo`: the whole align -> synth -> sheet pipeline on the dependency-shipped faces."""
from __future__ import annotations


import numpy as np
from click.testing import CliRunner

from maskkit.cli import main
from maskkit.io.shard_verify import verify
from maskkit.io.shards import read_samples


def _stamp(out):
    return {p: p.stat().st_mtime_ns for p in out.rglob("*")}


def test_demo_end_to_end(tmp_path):
    """The whole demo, claimed as every command claims its outputs: a folder holding a file at
    the demo's names is refused without --overwrite; this finished demo run again is "already
    complete" (nothing rewritten), unless a shard is missing or truncated (an error naming it, as
synth says); a demo with other options is refused. Before: preview.png and
    everything else overwritten silently, no --overwrite, and a rerun redid all the work."""
    out = tmp_path / "demo"
    out.mkdir()
    (out / "preview.png").write_bytes(b"someone's picture")
    r = CliRunner().invoke(main, ["demo", "--out", str(out), "-q"])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "already holds files that maskkit demo writes (preview.png)" in r.output and "--overwrite" in r.output
    assert (out / "preview.png").read_bytes() == b"someone's picture" and sorted(out.iterdir()) == [out / "preview.png"]
    r = CliRunner().invoke(main, ["demo", "--out", str(out), "-q", "--overwrite"])
    assert r.exit_code == 0, r.output
    photos = sorted(p.relative_to(out / "src").as_posix() for p in (out / "src").rglob("*.jpg"))
    assert len(photos) == 20 and {p.split("/")[0] for p in photos} == {"astronaut", "grace_hopper"}
    # align: every photo gives an aligned crop (both faces are clear and frontal)
    aligned = list((out / "aligned").rglob("*.jpg"))
    assert len(aligned) == 20
    # synth --ratio 0.5 --paired: exact ratio, twins linked, every input accounted
    rep = verify(out / "shards", decode=True)
    assert rep.ok, rep.problems
    man = rep.manifest
    assert man["paired"] and man["inputs"] == {"files": 20, "ok": 20, "failed": 0, "failed_by_reason": {},
                                               "seen": 20, "skipped": 0, "skipped_by_reason": {}}
    assert man["num_masked"] == 10 and man["num_samples"] == 30
    assert all(pc["masked"] == 5 for pc in man["per_class"].values())
    samples = {s["key"]: s for s in read_samples(out / "shards")}
    for s in samples.values():
        if s["json"]["masked"]:
            assert samples[s["json"]["twin"]]["json"]["twin"] == s["key"]
    # the contact sheet: one row per masked face, 4 cells of 160 px, and it is not blank
    from PIL import Image

    sheet = np.asarray(Image.open(out / "preview.png"))
    assert sheet.shape[0] >= 10 * 160 and sheet.shape[1] >= 4 * 160 and sheet.std() > 30
    assert "preview.png" in r.output or "preview.png" in (r.stderr if r.stderr_bytes else "")
    # the same demo again: "already complete", exit 0, not one file rewritten
    stamp = _stamp(out)
    r = CliRunner().invoke(main, ["demo", "--out", str(out), "-q"])
    assert r.exit_code == 0 and f"already complete: {out} holds this finished run" in r.output, r.output
    assert _stamp(out) == stamp
    # a demo with other options: refused, nothing touched
    r = CliRunner().invoke(main, ["demo", "--out", str(out), "-q", "--detector", "cnn"])
    assert r.exit_code == 1 and "a maskkit demo with other options" in r.output and "--overwrite" in r.output
    assert _stamp(out) == stamp
    # a damaged finished demo: not "already complete" but an error naming the shard, as synth says
    # (before: a removed or truncated shard still gave "already complete", exit 0)
    shard1 = out / "shards" / "train-000001.tar"
    with open(shard1, "r+b") as f:
        f.truncate(1000)
    r = CliRunner().invoke(main, ["demo", "--out", str(out), "-q"])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "train-000001.tar: 1000 bytes, manifest says" in r.output and "--overwrite" in r.output, r.output
    (out / "shards" / "train-000002.tar").unlink()
    r = CliRunner().invoke(main, ["demo", "--out", str(out), "-q"])
    assert r.exit_code == 1 and "train-000001.tar: 1000 bytes" in r.output and "(and 1 more)" in r.output, r.output
    shard1.unlink()
    r = CliRunner().invoke(main, ["demo", "--out", str(out), "-q"])
    assert r.exit_code == 1 and "train-000001.tar: listed shard is missing (and 1 more)" in r.output, r.output
    assert "already complete" not in r.output
