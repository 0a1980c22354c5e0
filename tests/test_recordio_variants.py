"""insightface ``.rec`` variants (issue 12 §4): sets without a header record (``im2rec
--pack-label``), headers whose range disagrees with the ``.idx``, and a ``.idx`` that does not
match its ``.rec``.

The sets are built here from real faces shipped in dependencies (scikit-image's astronaut,
matplotlib's Grace Hopper), aligned to 112x112 by maskkit's aligner, with the record layout of
MXNet's ``recordio.pack``: ``IRHeader`` ``<IfQQ`` (flag, label, id, id2); ``flag > 0`` means
``flag`` float32 labels follow the header and ``label`` is 0 (apache/mxnet
``python/mxnet/recordio.py``). ``im2rec.py --pack-label`` writes the ``.lst`` label columns as
such a vector, keys ``0..n-1`` from the list, and no header record.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from maskkit.io.recordio import IRHeader, RecordWriter, RecReader, pack_header


@pytest.fixture(scope="module")
def faces(astronaut, grace_hopper) -> list[np.ndarray]:
    """12 aligned 112x112 RGB faces: 6 of each person (the crop, its mirror, 4 brightness steps)."""
    from maskkit.training.eval.evalsets import FaceAligner

    al = FaceAligner()
    out = []
    for photo in (astronaut, grace_hopper):
        crop, _, _ = al(photo)
        for k in range(6):
            img = crop[:, ::-1] if k % 2 else crop
            out.append(np.clip(img.astype(int) + 6 * (k // 2), 0, 255).astype(np.uint8))
    return out


def _jpeg(rgb: np.ndarray) -> bytes:
    from maskkit.io.image_io import encode_jpeg

    return encode_jpeg(np.ascontiguousarray(rgb), 95)


def _write_pack_label(path: Path, faces, labels) -> Path:
    """An im2rec --pack-label set: keys 0..n-1, label vectors, no header record."""
    with RecordWriter(path, path.with_suffix(".idx")) as w:
        for k, (img, lab) in enumerate(zip(faces, labels)):
            w.write(k, pack_header(IRHeader(len(lab), tuple(lab), k, 0), _jpeg(img)))
    return path


def _write_insightface(path: Path, faces, classes, idx_keys=None) -> Path:
    """insightface layout: header (N+1, N+1+C), images 1..N, identity records; ``idx_keys``
    limits which keys the .idx lists (None: all)."""
    n, c = len(faces), max(classes) + 1
    recs = [(0, pack_header(IRHeader(2, (n + 1, n + 1 + c), 0, 0), b""))]
    recs += [(k + 1, pack_header(IRHeader(0, float(classes[k]), k + 1, 0), _jpeg(f))) for k, f in enumerate(faces)]
    start = 1
    for lab in range(c):
        cnt = classes.count(lab)
        recs.append((n + 1 + lab, pack_header(IRHeader(2, (start, start + cnt), n + 1 + lab, 0), b"")))
        start += cnt
    offsets = {}
    with RecordWriter(path, None) as w:
        for k, r in recs:
            offsets[k] = w.write(k, r)
    keys = sorted(offsets) if idx_keys is None else idx_keys
    path.with_suffix(".idx").write_text("".join(f"{k}\t{offsets[k]}\n" for k in keys), encoding="ascii")
    return path


CLASSES = [0] * 6 + [1] * 6


# ---- no header record ---------------------------------------------------------------------
@pytest.mark.parametrize("first_label", [(5.0, 3.0), (0.0, 7.0)], ids=["label-5-3", "label-0"])
def test_pack_label_set_without_header_reads_every_record(faces, tmp_path, first_label, caplog):
    """Record 0 is an image with a label vector: it is not a header. Before the fix the reader
    took its labels as the header's range: 4 of 12 images (label (5, 3)) or 0 of 12 (label 0)."""
    labels = [(float(c), float(k)) for k, c in enumerate(CLASSES)]
    labels[0] = first_label
    want = {k: int(lab[0]) for k, lab in enumerate(labels)}
    rec = _write_pack_label(tmp_path / "train.rec", faces, labels)
    with caplog.at_level(logging.WARNING), RecReader(rec) as r:
        assert r.header0 is None and r.index_source == "idx"
        assert r.image_keys == list(range(12))
        assert r.scan_labels() == want
        import cv2

        for k in r.image_keys:  # every payload is the JPEG of its face
            h, payload = r.read_record(k)
            assert h.flag == 2 and RecReader.label_of(h) == want[k]
            img = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
            # JPEG q95 round trip of a face crop: mean abs error a few grey levels out of 255
            assert np.abs(img.astype(int) - faces[k]).mean() < 4
    assert not caplog.records  # nothing to warn about


def test_synth_reads_every_record_of_a_pack_label_set(faces, tmp_path):
    """`maskkit synth --src train.rec --aligned` on an im2rec --pack-label set: 12 inputs, two
    identities of 6 (before the fix: 4 inputs of one identity)."""
    from maskkit.pipeline.synth import SynthConfig, run_synth

    labels = [(float(c), 1.0) for c in CLASSES]
    labels[0] = (5.0, 3.0)  # record 0's label vector; its class (5) is a third identity
    rec = _write_pack_label(tmp_path / "train.rec", faces, labels)
    res = run_synth(SynthConfig(src=rec, out=tmp_path / "out", aligned=True, ratio=0.0, styles=(),
                                shard_samples=100, progress=False))
    man = res.manifest
    assert man["inputs"]["files"] == 12
    assert man["num_samples"] + man["inputs"]["failed"] == 12
    assert man["inputs"]["failed"] == 0 and man["num_samples"] == 12
    assert {c: man["per_class"][c]["samples"] for c in man["classes"]} == {"0": 5, "1": 6, "5": 1}


# ---- a header whose range disagrees with the .idx -------------------------------------------
def test_header_range_disagreeing_with_idx_is_reported(faces, tmp_path, caplog):
    """The .idx lacks image keys 3 and 4 (13 records listed): the header's 12 images still fit,
    so it is the header; the 10 listed images are read, and one warning says what is absent."""
    keys = [0] + [k for k in range(1, 15) if k not in (3, 4)]
    rec = _write_insightface(tmp_path / "train.rec", faces, CLASSES, idx_keys=keys)
    with caplog.at_level(logging.WARNING), RecReader(rec) as r:
        assert r.header0 == (13, 15)
        assert r.image_keys == [1, 2] + list(range(5, 13))
        assert r.scan_labels() == {k: CLASSES[k - 1] for k in r.image_keys}
    msgs = [m.getMessage() for m in caplog.records]
    assert len(msgs) == 1 and "2 of its image keys 1..12 are absent" in msgs[0], msgs
    assert "identity keys" not in msgs[0]


def test_header_whose_identity_records_the_idx_does_not_list_is_refused(faces, tmp_path):
    """The .idx lists keys 0..12 of 15 (cut after the images): the header's range (13, 15) reaches
    past it. Refused like any cut .idx (before: a warning, and the set was read)."""
    from maskkit.io.recordio import RecTruncatedError

    rec = _write_insightface(tmp_path / "train.rec", faces, CLASSES, idx_keys=list(range(13)))
    with pytest.raises(RecTruncatedError) as ei:
        RecReader(rec)
    msg = str(ei.value)
    assert "\n" not in msg and "header record lists 15 records" in msg and "13 are readable" in msg, msg


def test_header_with_records_beyond_its_range_is_reported(faces, tmp_path, caplog):
    """A header that counts 8 images (range (9, 11)) in a set of 12 images + header: the range
    fits, so it is the header and insightface's keys 1..8 are read; the 6 records beyond are
    named in a warning instead of vanishing."""
    rec = tmp_path / "train.rec"
    with RecordWriter(rec, rec.with_suffix(".idx")) as w:
        w.write(0, pack_header(IRHeader(2, (9.0, 11.0), 0, 0), b""))
        for k in range(1, 13):
            w.write(k, pack_header(IRHeader(0, float(CLASSES[k - 1]), k, 0), _jpeg(faces[k - 1])))
    with caplog.at_level(logging.WARNING), RecReader(rec) as r:
        assert r.header0 == (9, 11) and r.image_keys == list(range(1, 9))
    msgs = [m.getMessage() for m in caplog.records]
    assert len(msgs) == 1 and "2 record(s) lie beyond its range (keys 11..12" in msgs[0], msgs


def test_header_whose_range_reaches_past_the_records_is_refused(faces, tmp_path):
    """Record 0 without an image, range (100, 102), in a set of 13 records: an insightface header
    of a set cut short (99 images by it, 12 here). Refused in one line (before: 'not taken as a
    header', 12 of 99 images read with a warning)."""
    from maskkit.io.recordio import RecTruncatedError

    rec = tmp_path / "train.rec"
    with RecordWriter(rec, rec.with_suffix(".idx")) as w:
        w.write(0, pack_header(IRHeader(2, (100.0, 102.0), 0, 0), b""))
        for k in range(1, 13):
            w.write(k, pack_header(IRHeader(0, float(CLASSES[k - 1]), k, 0), _jpeg(faces[k - 1])))
    with pytest.raises(RecTruncatedError, match=r"lists 102 records \(99 images, 2 identity records\), 13 are readable"):
        RecReader(rec)


def test_record0_with_a_fractional_range_is_not_a_header(faces, tmp_path, caplog):
    """Record 0 without an image whose 'range' (2.5, 7.25) is no pair of record keys: not a header
    (no insightface set has one); the 12 image records are all read, with one warning."""
    rec = tmp_path / "train.rec"
    with RecordWriter(rec, rec.with_suffix(".idx")) as w:
        w.write(0, pack_header(IRHeader(2, (2.5, 7.25), 0, 0), b""))
        for k in range(1, 13):
            w.write(k, pack_header(IRHeader(0, float(CLASSES[k - 1]), k, 0), _jpeg(faces[k - 1])))
    with caplog.at_level(logging.WARNING), RecReader(rec) as r:
        assert r.header0 is None and r.image_keys == list(range(1, 13))
        assert r.scan_labels() == {k: CLASSES[k - 1] for k in range(1, 13)}
    assert len(caplog.records) == 1 and "not taken as a header" in caplog.records[0].getMessage()


# ---- a .idx that does not match its .rec --------------------------------------------------
def _other_idx(faces, tmp_path: Path) -> str:
    """The .idx of another set: 8 of the faces written in shuffled key order, as ``im2rec
    --shuffle`` does (record keys are the list's indices), so key 0 is not at byte 0."""
    (tmp_path / "other").mkdir()
    path = tmp_path / "other" / "train.rec"
    with RecordWriter(path, path.with_suffix(".idx")) as w:
        for k in (5, 2, 7, 0, 3, 6, 1, 4):
            w.write(k, pack_header(IRHeader(1, (float(k % 2),), k, 0), _jpeg(faces[11 - k])))
    return path.with_suffix(".idx").read_text()


def test_mismatched_idx_warns_once_and_scans(faces, tmp_path, caplog):
    """Before the fix: ``RecError: bad magic`` from the constructor."""
    rec = _write_insightface(tmp_path / "train.rec", faces, CLASSES)
    idx = rec.with_suffix(".idx")
    idx.write_text(_other_idx(faces, tmp_path), encoding="ascii")
    with caplog.at_level(logging.WARNING), RecReader(rec) as r:
        assert r.scan_labels() == {k: CLASSES[k - 1] for k in range(1, 13)}
        assert r.header0 == (13, 15) and r.image_keys == list(range(1, 13))
        assert sorted(r.offsets) == list(range(15)) and r.index_source == "scan"
        assert [r.read_record(k)[0].id for k in range(15)] == list(range(15))
    msgs = [m.getMessage() for m in caplog.records]
    assert len(msgs) == 1 and str(idx) in msgs[0] and "sequential scan" in msgs[0], msgs


def test_idx_wrong_only_in_the_middle_is_caught_when_labels_are_read(faces, tmp_path, caplog, monkeypatch):
    """Opening checks a sample of offsets (here only the first and last); the label scan checks
    every one, and falls back once. Before the fix the labels were read from the wrong bytes."""
    rec = _write_insightface(tmp_path / "train.rec", faces, CLASSES)
    idx = rec.with_suffix(".idx")
    lines = idx.read_text().splitlines()
    k, off = lines[9].split("\t")
    lines[9] = f"{k}\t{int(off) + 40}"  # key 9 (class 1) points 40 bytes into its JPEG
    idx.write_text("\n".join(lines) + "\n", encoding="ascii")
    monkeypatch.setattr(RecReader, "OPEN_CHECKS", 1, raising=False)
    with caplog.at_level(logging.WARNING), RecReader(rec) as r:
        assert r.scan_labels() == {k: CLASSES[k - 1] for k in range(1, 13)}
        assert r.image_keys == list(range(1, 13)) and r.index_source == "scan"
    msgs = [m.getMessage() for m in caplog.records]
    assert len(msgs) == 1 and str(idx) in msgs[0] and "key 9" in msgs[0], msgs


def test_unparsable_idx_is_a_mismatch_too(faces, tmp_path, caplog):
    rec = _write_pack_label(tmp_path / "train.rec", faces, [(float(c),) for c in CLASSES])
    rec.with_suffix(".idx").write_text("this is not an index\n", encoding="ascii")
    with caplog.at_level(logging.WARNING), RecReader(rec) as r:
        assert r.index_source == "scan" and r.scan_labels() == dict(enumerate(CLASSES))
    assert len(caplog.records) == 1


def test_synth_cli_on_a_mismatched_idx(faces, tmp_path):
    """The command (a fresh process, so its own logging setup) prints one warning line naming the
    .idx and reads all 12 records (before the fix: a ``RecError: bad magic`` traceback)."""
    import json
    import subprocess
    import sys

    rec = _write_pack_label(tmp_path / "train.rec", faces, [(float(c), 0.0) for c in CLASSES])
    rec.with_suffix(".idx").write_text(_other_idx(faces, tmp_path), encoding="ascii")
    p = subprocess.run([sys.executable, "-m", "maskkit.cli", "synth", "--src", str(rec), "--aligned", "--ratio", "0",
                        "--styles", "", "--out", str(tmp_path / "out"), "-q"], capture_output=True, text=True,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr
    warn = [ln for ln in p.stderr.splitlines() if "does not match" in ln]
    assert len(warn) == 1 and str(rec.with_suffix(".idx")) in warn[0], p.stderr
    man = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert man["inputs"]["files"] == 12 and man["classes"] == ["0", "1"]
    assert man["num_samples"] + man["inputs"]["failed"] == 12


# ---- a .rec cut short (a truncated download) -----------------------------------------------
def _cut(rec: Path, keep: int) -> None:
    with open(rec, "r+b") as f:
        f.truncate(keep)


def _record_offsets(rec: Path) -> list[int]:
    return [int(line.split("\t")[1]) for line in rec.with_suffix(".idx").read_text().splitlines()]


@pytest.mark.parametrize("where", ["inside-a-record", "at-a-record-boundary"])
def test_rec_cut_short_with_its_idx_is_refused(faces, tmp_path, where):
    """The .idx (intact) lists 15 records; the .rec is cut after image 6. Before the fix the
    reader fell back to a scan and read the 7 records before the cut as the whole set (a warning,
    record 0 not taken as a header, 6 of 12 faces): the lost records were in no log."""
    from maskkit.io.recordio import RecTruncatedError

    rec = _write_insightface(tmp_path / "train.rec", faces, CLASSES)
    offs = _record_offsets(rec)
    _cut(rec, offs[7] + (100 if where == "inside-a-record" else 0))  # keys 0..6 whole
    with pytest.raises(RecTruncatedError) as ei:
        RecReader(rec)
    msg = str(ei.value)
    assert "\n" not in msg and "truncated" in msg
    assert "lists 15 records (12 images by its header record), 7 are readable" in msg, msg


def test_rec_cut_short_without_idx_is_refused(faces, tmp_path):
    """No .idx: the sequential scan ends inside record 7. Before the fix: a warning and the 7
    records before the cut read as the whole set."""
    from maskkit.io.recordio import RecTruncatedError

    rec = _write_insightface(tmp_path / "train.rec", faces, CLASSES)
    offs = _record_offsets(rec)
    rec.with_suffix(".idx").unlink()
    _cut(rec, offs[7] + 100)
    with pytest.raises(RecTruncatedError, match=r"inside record 7 .*7 whole records are readable \(12 images by"):
        RecReader(rec)


def test_rec_cut_at_a_boundary_without_idx_is_refused(faces, tmp_path):
    """No .idx, the .rec cut exactly after image 6: every record left is whole, but the header
    record lists 15 (12 images). Refused in one line (before: a warning, 6 of 12 images read)."""
    from maskkit.io.recordio import RecTruncatedError

    rec = _write_insightface(tmp_path / "train.rec", faces, CLASSES)
    offs = _record_offsets(rec)
    rec.with_suffix(".idx").unlink()
    _cut(rec, offs[7])
    with pytest.raises(RecTruncatedError) as ei:
        RecReader(rec)
    msg = str(ei.value)
    assert "\n" not in msg and "truncated" in msg and "re-download" in msg, msg
    assert "header record lists 15 records (12 images, 2 identity records), 7 are readable" in msg, msg


@pytest.mark.parametrize("keep", [7, 13])
def test_intact_rec_with_a_cut_idx_is_refused(faces, tmp_path, keep):
    """The .rec is whole (15 records) but its .idx lists only the first ``keep``: refused, and the
    message says the .rec continues past the .idx (before: a warning and keep - 1 of 12 images)."""
    from maskkit.io.recordio import RecTruncatedError

    rec = _write_insightface(tmp_path / "train.rec", faces, CLASSES, idx_keys=list(range(keep)))
    with pytest.raises(RecTruncatedError) as ei:
        RecReader(rec)
    msg = str(ei.value)
    assert "\n" not in msg and f"lists 15 records (12 images, 2 identity records), {keep} are readable" in msg, msg
    assert "continues past its last record" in msg, msg


@pytest.mark.parametrize("where", ["inside-a-record", "at-a-boundary-no-idx"])
def test_synth_cli_refuses_a_truncated_rec_in_one_line(faces, tmp_path, where):
    """`maskkit synth --src train.rec --aligned` on a cut .rec: one line naming the file, how many
    records are listed (.idx or header record) and how many are readable; nonzero exit, no output set."""
    import subprocess
    import sys

    rec = _write_insightface(tmp_path / "train.rec", faces, CLASSES)
    offs = _record_offsets(rec)
    if where == "at-a-boundary-no-idx":
        rec.with_suffix(".idx").unlink()
    _cut(rec, offs[7] + (100 if where == "inside-a-record" else 0))
    p = subprocess.run([sys.executable, "-m", "maskkit.cli", "synth", "--src", str(rec), "--aligned", "--ratio", "0",
                        "--styles", "", "--out", str(tmp_path / "out"), "-q"], capture_output=True, text=True,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode != 0 and "Traceback" not in p.stderr, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(rec) in lines[0] and "truncated" in lines[0], p.stderr
    assert "15 records" in lines[0] and "7 are readable" in lines[0], p.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_export_rec_then_synth_keeps_the_class_names(faces, tmp_path):
    """A shard set of two named identities -> export-rec -> synth --src train.rec: the classes are
    the names again (its sidecar lists them); before: '0', '1'."""
    import cv2

    from maskkit.io.rec_export import export_rec
    from maskkit.pipeline.synth import SynthConfig, run_synth

    src = tmp_path / "src"
    for name, part in (("astronaut", faces[:6]), ("grace_hopper", faces[6:])):
        (src / name).mkdir(parents=True)
        for k, img in enumerate(part):
            cv2.imwrite(str(src / name / f"{k}.png"), np.ascontiguousarray(img[:, :, ::-1]))
    common = dict(aligned=True, ratio=0.0, styles=(), shard_samples=100, progress=False)
    first = run_synth(SynthConfig(src=src, out=tmp_path / "sh", **common)).manifest
    assert first["classes"] == ["astronaut", "grace_hopper"] and first["num_samples"] == 12
    export_rec(tmp_path / "sh", tmp_path / "rec")
    again = run_synth(SynthConfig(src=tmp_path / "rec" / "train.rec", out=tmp_path / "sh2", **common)).manifest
    assert again["classes"] == ["astronaut", "grace_hopper"]
    assert {c: again["per_class"][c]["samples"] for c in again["classes"]} == \
        {c: first["per_class"][c]["samples"] for c in first["classes"]}
