"""insightface .rec export and input, checked with an independent reader written here from the
format description (dmlc RecordIO framing + MXNet IRHeader), not with maskkit.io.recordio's reader."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from maskkit.io.recordio import MAGIC, IRHeader, RecordWriter, RecReader, pack_header
from maskkit.io.shard_verify import verify
from maskkit.io.shards import expected_masked, read_samples
from maskkit.pipeline.synth import SynthConfig, run_synth


# ---- the independent reader -------------------------------------------------------------------
def ind_read_record(buf: bytes, off: int) -> tuple[bytes, list[int]]:
    """One logical record at ``off``: magic (u32 LE) | lrec (u32: cflag<<29 | len) | data | pad to 4.
    Split records (cflag 1, 2.., 3) are joined with the magic re-inserted. Returns (data, cflags)."""
    parts, flags = [], []
    while True:
        magic, lrec = struct.unpack_from("<II", buf, off)
        assert magic == 0xCED7230A, f"bad magic at {off}"
        cflag, n = lrec >> 29, lrec & ((1 << 29) - 1)
        data = buf[off + 8: off + 8 + n]
        off += 8 + n + (-n) % 4
        parts.append(data)
        flags.append(cflag)
        if cflag in (0, 3):
            return struct.pack("<I", 0xCED7230A).join(parts), flags


def ind_header(rec: bytes):
    """IRHeader '<IfQQ' (flag, label, id, id2); flag>0: flag float32 labels follow."""
    flag, label, id_, id2 = struct.unpack_from("<IfQQ", rec, 0)
    off = 24
    if flag > 0:
        label = struct.unpack_from(f"<{flag}f", rec, off)
        off += 4 * flag
    return flag, label, id_, id2, rec[off:]


def ind_load(folder: Path):
    buf = (folder / "train.rec").read_bytes()
    idx = {}
    for line in (folder / "train.idx").read_text().splitlines():
        k, o = line.split("\t")
        idx[int(k)] = int(o)
    recs = {k: ind_header(ind_read_record(buf, o)[0]) for k, o in idx.items()}
    return buf, idx, recs


# ---- tests -------------------------------------------------------------------------------------
def _subset(src: Path, dst: Path, per: int, ids: int) -> Path:
    for d in sorted(p for p in src.iterdir() if p.is_dir())[:ids]:
        (dst / d.name).mkdir(parents=True)
        for f in sorted(d.iterdir())[:per]:
            (dst / d.name / f.name).symlink_to(f)
    return dst


@pytest.fixture(scope="module")
def small_shards(celeb_aligned, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rec")
    sub = _subset(celeb_aligned, tmp / "sub", per=9, ids=3)
    out = tmp / "shards"
    run_synth(SynthConfig(src=sub, out=out, aligned=True, ratio=0.5, shard_samples=10, progress=False))
    return out


def test_export_rec_read_back_independently(small_shards, tmp_path):
    from click.testing import CliRunner

    from maskkit.cli import main

    r = CliRunner().invoke(main, ["export-rec", str(small_shards), "-o", str(tmp_path / "rec")])
    assert r.exit_code == 0, r.output
    rec = tmp_path / "rec"
    assert (rec / "property").read_text().strip() == "3,112,112"
    samples = list(read_samples(small_shards))
    n = len(samples)
    buf, idx, recs = ind_load(rec)
    assert sorted(idx) == list(range(0, n + 1 + 3))
    assert idx[0] == 0 and all(o % 4 == 0 for o in idx.values())
    flag, label, _, _, payload = recs[0]
    assert flag == 2 and label == (n + 1, n + 4) and payload == b""
    # images: class order, same JPEG bytes as the shards, id2 = masked
    for k, s in zip(range(1, n + 1), samples):
        flag, label, id_, id2, payload = recs[k]
        assert flag == 0 and label == float(s["json"]["label"]) and id_ == k
        assert payload == s["jpg"] and id2 == int(s["json"]["masked"])
    # identity records: contiguous image ranges per class
    starts = 1
    for c in range(3):
        flag, label, _, _, _ = recs[n + 1 + c]
        cnt = sum(1 for s in samples if s["json"]["label"] == c)
        assert flag == 2 and label == (starts, starts + cnt)
        starts += cnt
    # the JPEGs decode to 112x112 faces
    import cv2

    img = cv2.imdecode(np.frombuffer(recs[1][4], np.uint8), cv2.IMREAD_COLOR)
    assert img.shape == (112, 112, 3)


def test_split_record_with_magic_in_payload(tmp_path):
    """A payload holding the magic at a 4-byte-aligned offset is split (dmlc-core rule) and
    rejoined identically by both readers; an unaligned magic is not split."""
    m = struct.pack("<I", MAGIC)
    aligned_payload = b"ABCD" * 3 + m + b"tail-of-the-jpeg" + m + b"xy"  # magic at 12+24=36 and 36+4+16
    unaligned = b"ABC" + m + b"12345"
    with RecordWriter(tmp_path / "t.rec", tmp_path / "t.idx") as w:
        w.write(0, pack_header(IRHeader(0, 1.0, 0, 0), aligned_payload))
        w.write(1, pack_header(IRHeader(0, 2.0, 1, 0), unaligned))
    buf = (tmp_path / "t.rec").read_bytes()
    idx = [int(x.split("\t")[1]) for x in (tmp_path / "t.idx").read_text().splitlines()]
    data0, flags0 = ind_read_record(buf, idx[0])
    data1, flags1 = ind_read_record(buf, idx[1])
    assert flags0 == [1, 2, 3] and flags1 == [0]
    assert ind_header(data0)[4] == aligned_payload and ind_header(data1)[4] == unaligned
    with RecReader(tmp_path / "t.rec") as r:
        assert r.read_record(0)[1] == aligned_payload and r.read_record(1)[1] == unaligned
        assert r.scan_labels() == {0: 1, 1: 2}


def test_synth_from_rec(small_shards, tmp_path):
    """`maskkit synth --src train.rec --aligned`: identities are the labels, ratio exact per label."""
    from maskkit.io.rec_export import export_rec

    # a plain (unmasked) .rec, as MS1M/Glint360K ship it
    plain = tmp_path / "plain"
    run_synth(SynthConfig(src=small_shards.parent / "sub", out=plain, aligned=True, ratio=0.0, styles=(),
                          shard_samples=100, progress=False))
    export_rec(plain, tmp_path / "rec")
    out = tmp_path / "from_rec"
    res = run_synth(SynthConfig(src=tmp_path / "rec" / "train.rec", out=out, aligned=True, ratio=0.5,
                                shard_samples=10, progress=False))
    rep = verify(out, decode=True)
    assert rep.ok, rep.problems
    man = res.manifest
    assert man["classes"] == sorted(p.name for p in (small_shards.parent / "sub").iterdir())  # sidecar names
    assert man["inputs"]["files"] == 27
    assert man["num_samples"] + man["inputs"]["failed"] == 27
    for c in man["classes"]:
        pc = man["per_class"][c]
        assert pc["masked"] == expected_masked(0.5, pc["samples"])
    srcs = [s["json"]["src"] for s in read_samples(out)]
    assert srcs[0] == "train.rec#1" and len(set(srcs)) == len(srcs)
    with pytest.raises(Exception, match="--aligned"):
        run_synth(SynthConfig(src=tmp_path / "rec" / "train.rec", out=tmp_path / "x", progress=False))


def test_synth_from_a_full_export_never_masks_a_face_twice(small_shards, tmp_path):
    """A maskkit export of all samples marks its masked faces (id2 = 1 + the sidecar): synth on it
    keeps only the plain ones and logs each masked record as ``already_masked``."""
    import json

    from maskkit.io.rec_export import export_rec

    info = export_rec(small_shards, tmp_path / "rec")
    n_masked = sum(1 for s in read_samples(small_shards) if s["json"]["masked"])
    side = json.loads(Path(info["sidecar"]).read_text())
    assert side["masked"] == n_masked > 0 and side["images"] == 27 and side["only"] == "all"
    with RecReader(info["rec"]) as r:
        r.scan_labels()
        assert len(r.masked_keys) == n_masked
    out = tmp_path / "again"
    res = run_synth(SynthConfig(src=Path(info["rec"]), out=out, aligned=True, ratio=0.5, shard_samples=10,
                                progress=False))
    man = res.manifest
    assert man["inputs"]["files"] == 27 and man["num_samples"] + man["inputs"]["failed"] == 27
    fails = [json.loads(ln) for ln in (out / "failures.jsonl").read_text().splitlines()]
    again = [f for f in fails if f["reason"] == "already_masked"]
    assert len(again) == n_masked and "--only plain" in again[0]["detail"]
    assert man["num_samples"] == 27 - n_masked - (len(fails) - len(again))
    # without the sidecar (a third-party .rec) id2 means nothing: every record is an input
    Path(info["sidecar"]).unlink()
    with RecReader(info["rec"]) as r:
        r.scan_labels()
        assert r.masked_keys == set()


def test_export_rec_positional_out_is_deprecated_but_same_bytes(small_shards, tmp_path):
    """The old spelling ``export-rec SHARDS OUT`` still writes the same .rec/.idx as ``-o OUT``, with
    one deprecation note on stderr; giving both spellings is a usage error."""
    from click.testing import CliRunner

    from maskkit.cli import main

    new = CliRunner().invoke(main, ["export-rec", str(small_shards), "-o", str(tmp_path / "new"), "-q"])
    old = CliRunner().invoke(main, ["export-rec", str(small_shards), str(tmp_path / "old"), "-q"])
    assert new.exit_code == 0 and old.exit_code == 0, (new.output, old.output)
    assert "deprecated" not in new.stderr and old.stderr.count("deprecated") == 1, old.stderr
    assert "-o/--out" in old.stderr
    for name in ("train.rec", "train.idx", "property"):
        assert (tmp_path / "old" / name).read_bytes() == (tmp_path / "new" / name).read_bytes(), name
    both = CliRunner().invoke(main, ["export-rec", str(small_shards), str(tmp_path / "x"), "-o", str(tmp_path / "y")])
    assert both.exit_code == 2 and "both given" in both.output and not (tmp_path / "x").exists()
    none = CliRunner().invoke(main, ["export-rec", str(small_shards)])
    assert none.exit_code == 2 and "Missing option '-o' / '--out'" in none.output


def test_synth_on_a_masked_only_export_writes_nothing_and_says_why(small_shards, tmp_path):
    from click.testing import CliRunner

    from maskkit.cli import main

    r = CliRunner().invoke(main, ["export-rec", str(small_shards), "-o", str(tmp_path / "rec"), "--only", "masked"])
    assert r.exit_code == 0, r.output
    n = sum(1 for s in read_samples(small_shards) if s["json"]["masked"])
    r = CliRunner().invoke(main, ["synth", "--src", str(tmp_path / "rec" / "train.rec"), "--aligned",
                                  "--out", str(tmp_path / "again"), "-q"])
    assert r.exit_code == 1, r.output  # every input failed: exit 1, after the summary (issue 12 §9)
    assert "no sample was written" in r.output and f"already_masked {n}" in r.output, r.output
    assert len((tmp_path / "again" / "failures.jsonl").read_text().splitlines()) == n


def test_export_rec_only_plain_or_masked(small_shards, tmp_path):
    """`export-rec --only plain` keeps exactly the unmasked samples (so synth on the .rec never
    masks a face twice); `--only masked` the masked ones; ranges stay contiguous per class."""
    from click.testing import CliRunner

    from maskkit.cli import main

    samples = list(read_samples(small_shards))
    for only in ("plain", "masked"):
        want = [s for s in samples if bool(s["json"]["masked"]) == (only == "masked")]
        r = CliRunner().invoke(main, ["export-rec", str(small_shards), "-o", str(tmp_path / only), "--only", only])
        assert r.exit_code == 0, r.output
        _, idx, recs = ind_load(tmp_path / only)
        n = len(want)
        assert 0 < n < len(samples) and recs[0][1] == (n + 1, n + 4)
        for k, s in zip(range(1, n + 1), want):
            assert recs[k][4] == s["jpg"] and recs[k][3] == (only == "masked")
        starts = 1
        for c in range(3):
            cnt = sum(1 for s in want if s["json"]["label"] == c)
            assert recs[n + 1 + c][1] == (starts, starts + cnt)
            starts += cnt


# ---- a damaged shard set (always-on: two real faces from dependencies) ---------------------------
@pytest.fixture()
def two_shards(tmp_path, astronaut, grace_hopper):
    """``maskkit synth`` on two identities (astronaut, grace_hopper at half size), one sample per
    shard: ``train-000000.tar`` and ``train-000001.tar``. Returns (src, shards, synth args)."""
    from click.testing import CliRunner
    from PIL import Image

    from maskkit.cli import main

    src = tmp_path / "src"
    for ident, rgb in (("p", astronaut), ("q", grace_hopper)):
        (src / ident).mkdir(parents=True)
        Image.fromarray(np.ascontiguousarray(rgb[::2, ::2])).save(src / ident / "a.jpg")
    args = ["synth", "--src", str(src), "--out", str(tmp_path / "shards"), "--ratio", "0.5",
            "--shard-samples", "1", "-j", "1", "-q"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    shards = tmp_path / "shards"
    assert sorted(p.name for p in shards.glob("*.tar")) == ["train-000000.tar", "train-000001.tar"]
    return src, shards, args


def _damage(p: Path, at: int = 512 + 300) -> None:
    """Change 4 bytes of the first member's data (the sample's JPEG; tar data starts at 512)."""
    data = bytearray(p.read_bytes())
    data[at:at + 4] = bytes(b ^ 0x5A for b in data[at:at + 4])
    p.write_bytes(bytes(data))


def test_export_rec_refuses_a_damaged_shard(two_shards, tmp_path):
    """Was: 4 bytes changed in train-000001.tar -> `maskkit stats` said MISMATCH, but export-rec
    exported the damaged JPEG with exit 0. Now it checks every shard's sha256 first (the check
    stats makes) and refuses in one line naming the shard; --no-verify exports anyway."""
    from click.testing import CliRunner

    from maskkit.cli import main

    _, shards, _ = two_shards
    ok = CliRunner().invoke(main, ["export-rec", str(shards), "-o", str(tmp_path / "good"), "-q"])
    assert ok.exit_code == 0, ok.output
    _damage(shards / "train-000001.tar")
    stats = CliRunner().invoke(main, ["stats", str(shards), "-q"])
    assert stats.exit_code == 1 and "train-000001.tar: sha256" in stats.output
    res = CliRunner().invoke(main, ["export-rec", str(shards), "-o", str(tmp_path / "rec")])
    assert res.exit_code == 1, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "train-000001.tar: sha256" in lines[0] and "--no-verify" in lines[0], res.output
    assert "train-000000.tar" not in lines[0] and "Traceback" not in res.output
    assert not (tmp_path / "rec" / "train.rec").exists()  # nothing exported
    anyway = CliRunner().invoke(main, ["export-rec", str(shards), "-o", str(tmp_path / "rec"), "--no-verify", "-q"])
    assert anyway.exit_code == 0, anyway.output
    assert (tmp_path / "rec" / "train.rec").read_bytes() != (tmp_path / "good" / "train.rec").read_bytes()
    # a missing shard is named the same way
    (shards / "train-000000.tar").unlink()
    gone = CliRunner().invoke(main, ["export-rec", str(shards), "-o", str(tmp_path / "rec2")])
    assert gone.exit_code == 1 and "train-000000.tar: listed shard is missing" in gone.output, gone.output


def test_synth_rerun_checks_the_shard_sizes_before_already_complete(two_shards):
    """A finished run found again is "already complete" only when its shards are all there at
    their listed sizes (a stat each, no hashing): a truncated or missing shard is a one-line
    error naming it (exit 1), and --overwrite rebuilds the set."""
    from click.testing import CliRunner

    from maskkit.cli import main
    from maskkit.io.shard_verify import verify

    _, shards, args = two_shards
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "already complete" in again.output, again.output
    p = shards / "train-000001.tar"
    p.write_bytes(p.read_bytes()[:-512])
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "train-000001.tar" in res.output and "--overwrite" in res.output, res.output
    assert "already complete" not in res.output
    rebuilt = CliRunner().invoke(main, args + ["--overwrite"])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert verify(shards).ok
