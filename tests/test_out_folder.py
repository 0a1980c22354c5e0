"""Issue 20: an --out that holds the user's own files, and synth naming what differs.

Before: ``synth`` and ``align`` wrote into an unrelated non-empty folder beside the user's files
(``mask`` too), and ``--overwrite`` could replace a file of the user's at an output name (synth
deleted any ``train-*.tar`` or ``failures.jsonl`` it found). Now a folder holding anything but
maskkit's own output is refused unless ``--overwrite``; with ``--overwrite`` the run writes beside
those files and never replaces or removes one (a run whose output would land on one is refused,
naming it). And synth's refusal of a set "made with other inputs or options" says which.

Faces: the astronaut and grace_hopper (dependency-shipped), :func:`zoo.faces_tree`.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from maskkit.cli import main
from zoo import faces_tree

COMMANDS = ("align", "mask", "synth")


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return faces_tree(tmp_path_factory.mktemp("faces") / "src", per=2)


def _run(command: str, src: Path, out: Path, *extra: str):
    return CliRunner().invoke(main, [command, "--src", str(src), "--out", str(out), "-j", "1", "-q", *extra])


def _snapshot(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def _users_folder(root: Path) -> Path:
    """A folder of the user's: notes, a photo in a sub-folder, a link."""
    out = root / "mine"
    (out / "holiday").mkdir(parents=True)
    (out / "notes.txt").write_text("my notes\n")
    (out / "holiday" / "beach.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    os.symlink(out / "holiday", out / "link-to-holiday")
    return out


@pytest.mark.parametrize("command", COMMANDS)
def test_a_folder_of_other_files_is_refused_and_left_as_it_was(src, tmp_path, command):
    out = _users_folder(tmp_path)
    before = _snapshot(out)
    res = _run(command, src, out)
    assert res.exit_code == 1 and "Traceback" not in res.output
    msg = " ".join(res.stderr.split())
    assert f"--out {out} is not empty" in msg and "notes.txt" in msg and "holiday/beach.jpg" in msg, msg
    assert "--overwrite to write beside them" in msg
    assert _snapshot(out) == before  # nothing written, not even a run record


@pytest.mark.parametrize("command", COMMANDS)
def test_overwrite_writes_beside_the_users_files_and_keeps_them(src, tmp_path, command):
    out = _users_folder(tmp_path)
    before = _snapshot(out)
    res = _run(command, src, out, "--overwrite")
    assert res.exit_code == 0, res.output
    after = _snapshot(out)
    assert {k: after.get(k) for k in before} == before  # every file of the user's, unchanged
    produced = set(after) - set(before)
    assert ("manifest.json" if command == "synth" else "manifest.jsonl") in produced
    # a rerun finds its own finished run: "already complete", no refusal, nothing rewritten
    again = _run(command, src, out)
    assert again.exit_code == 0 and "already complete" in again.output, again.output
    assert _snapshot(out) == after


@pytest.mark.parametrize("command,taken", [
    ("align", "eileen/00.jpg"),              # a crop's name
    ("mask", "grace/01.jpg"),                # a masked photo's name
    ("mask", "grace/01.mask.png"),           # its --coverage file
    ("align", "manifest.jsonl"),             # an accounting file's name (another tool's)
    ("synth", "train-000000.tar"),           # a shard's name, without a synth run around it
    ("synth", "failures.jsonl"),
    ("synth", "manifest.json"),              # another tool's manifest.json
])
def test_overwrite_never_replaces_a_file_it_did_not_write(src, tmp_path, command, taken):
    out = tmp_path / "mine"
    (out / taken).parent.mkdir(parents=True, exist_ok=True)
    (out / taken).write_text('{"not": "maskkit"}\n')
    (out / "notes.txt").write_text("my notes\n")
    before = _snapshot(out)
    extra = ["--coverage"] if taken.endswith(".mask.png") else []
    res = _run(command, src, out, "--overwrite", *extra)
    assert res.exit_code == 1, res.output
    msg = " ".join(res.stderr.split())
    assert f"where this run would write ({taken})" in msg and "never replaces a file maskkit did not write" in msg
    assert _snapshot(out) == before


def test_faces_all_numbered_crops_count_as_outputs(src, tmp_path):
    """--faces all writes <stem>_<k>.jpg: a file of the user's at eileen/00_1.jpg is one of those."""
    out = tmp_path / "mine"
    (out / "eileen").mkdir(parents=True)
    (out / "eileen" / "00_1.jpg").write_bytes(b"mine")
    (out / "eileen" / "00_x.jpg").write_bytes(b"mine too, but no output takes this name")
    res = _run("align", src, out, "--overwrite", "--faces", "all")
    assert res.exit_code == 1 and "(eileen/00_1.jpg)" in " ".join(res.stderr.split()), res.output


@pytest.mark.parametrize("command", COMMANDS)
def test_empty_folders_and_system_files_are_not_the_users(src, tmp_path, command):
    """A folder with only empty sub-folders and what a system leaves (.DS_Store, Thumbs.db,
    lost+found) is as good as empty: the run goes ahead without --overwrite."""
    out = tmp_path / "fresh"
    (out / "empty" / "deeper").mkdir(parents=True)
    (out / "lost+found").mkdir()
    (out / ".DS_Store").write_bytes(b"\0")
    (out / "Thumbs.db").write_bytes(b"\0")
    res = _run(command, src, out)
    assert res.exit_code == 0, res.output


# ---- synth: say which inputs or options differ ----------------------------------------------------
@pytest.fixture(scope="module")
def finished(src, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "out"
    assert _run("synth", src, out, "--ratio", "0.5").exit_code == 0
    return out


@pytest.mark.parametrize("extra,named", [
    (["--ratio", "0.3"], ["--ratio 0.5 -> 0.3"]),
    (["--seed", "7", "--quality", "80"], ["--seed 0 -> 7", "--quality 95 -> 80"]),
    (["--styles", "surgical,n95"], ["--styles ['surgical', 'n95', 'kn95', 'cloth', 'gas'] -> ['surgical', 'n95']"]),
    (["--max-side", "320"], ["detector options (--max-side, --upsample) {'max_side': 640} -> {'max_side': 320}"]),
    (["--size", "128"], ["--size [112, 112] -> [128, 128]"]),
])
def test_synth_refusal_names_the_options_that_differ(src, finished, extra, named):
    res = _run("synth", src, finished, *extra)
    assert res.exit_code == 1
    msg = " ".join(res.stderr.split())
    assert "made with other inputs or options (" in msg, msg
    for n in named:
        assert n in msg, (n, msg)
    assert "--src" not in msg.split("(", 1)[1]  # only what differs


def test_synth_refusal_names_other_inputs(src, finished, tmp_path):
    """Same options, other inputs: the count then and now; the same count with another name: said too."""
    import shutil

    more = tmp_path / "src"
    shutil.copytree(src, more)
    (more / "eileen" / "01.jpg").rename(more / "eileen" / "01b.jpg")
    shutil.copy(more / "eileen" / "00.jpg", more / "eileen" / "02.jpg")
    moved = tmp_path / "out"
    shutil.copytree(finished, moved)
    man = json.loads((moved / "manifest.json").read_text())
    # the set says it was made from `more`: only the inputs differ
    man["config"]["src"] = str(more.resolve())
    (moved / "manifest.json").write_text(json.dumps(man))
    msg = " ".join(_run("synth", more, moved).stderr.split())
    assert f"the inputs: {man['inputs']['files']} files then, {man['inputs']['files'] + 1} now" in msg, msg
    (more / "eileen" / "02.jpg").unlink()
    msg = " ".join(_run("synth", more, moved).stderr.split())
    assert f"the same count ({man['inputs']['files']} files) with other names or identities" in msg, msg


def test_synth_refusal_names_options_of_an_older_set_and_of_an_unfinished_run(src, finished, tmp_path):
    """A set made before manifests recorded `config`: the options it does record are compared.
    An unfinished run (its journal) with other options: named as well."""
    import shutil

    old = tmp_path / "old"
    shutil.copytree(finished, old)
    man = json.loads((old / "manifest.json").read_text())
    del man["config"]
    (old / "manifest.json").write_text(json.dumps(man))
    msg = " ".join(_run("synth", src, old, "--ratio", "0.25", "--paired").stderr.split())
    assert "(--ratio 0.5 -> 0.25; --paired False -> True)" in msg, msg

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    journal = {"journal": 1, "fingerprint": "x", "config": {**man.get("config", {}), "ratio": 0.5, "seed": 3,
                                                            "algorithm": man["algorithm_version"]}, "files": 5}
    (unfinished / ".synth-journal.jsonl").write_text(json.dumps(journal) + "\n")
    msg = " ".join(_run("synth", src, unfinished, "--ratio", "0.5").stderr.split())
    assert "holds an unfinished run with other inputs or options (--seed 3 -> 0)" in msg, msg


def test_demo_and_export_rec_refuse_a_folder_of_other_files_too(src, tmp_path):
    """The folder rule holds for the commands that write a folder of their own next to align, mask
    and synth: ``demo --out`` and ``export-rec -o`` into a folder of the user's (or another command's
    output: a shard set) are refused, naming the files, and write nothing; with ``--overwrite``
    they write beside them and keep every one."""
    shards = tmp_path / "shards"
    assert _run("synth", src, shards, "--ratio", "0").exit_code == 0
    for args in (["demo", "--out", "{out}", "-j", "1", "-q"], ["export-rec", str(shards), "-o", "{out}", "-q"]):
        out = _users_folder(tmp_path / args[0])
        before = _snapshot(out)
        run = [a.replace("{out}", str(out)) for a in args]
        res = CliRunner().invoke(main, run)
        msg = " ".join(res.output.split())
        assert res.exit_code == 1 and "is not empty" in msg and "notes.txt" in msg, (args[0], msg)
        assert _snapshot(out) == before
        res = CliRunner().invoke(main, run + ["--overwrite"])
        assert res.exit_code == 0, (args[0], res.output)
        after = _snapshot(out)
        assert {k: after.get(k) for k in before} == before and len(after) > len(before)
    # export-rec into the shard set itself: another command's output, refused
    before = _snapshot(shards)
    res = CliRunner().invoke(main, ["export-rec", str(shards), "-o", str(shards), "-q"])
    assert res.exit_code == 1 and "is not empty" in res.output and _snapshot(shards) == before
