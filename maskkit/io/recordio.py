"""insightface / MXNet ``.rec`` training sets without mxnet: the format, a writer and a reader
(``maskkit export-rec`` is :func:`maskkit.io.rec_export.export_rec`).

The format (dmlc-core RecordIO + MXNet's image record header), as insightface's
``arcface_torch`` reads it:

* A ``.rec`` file is a sequence of records. Each record starts with the magic ``0xced7230a``
  (uint32 little-endian), then ``lrec`` (uint32): the low 29 bits are the payload length, the
  upper 3 bits a continuation flag ``cflag`` (0 whole record; 1 first, 2 middle, 3 last part of
  a record that was split because its payload contained the magic at a 4-byte-aligned offset --
  the magic itself is dropped at each split and re-inserted by the reader). Each part's payload
  is zero-padded to a multiple of 4 bytes.
* A record's payload is ``IRHeader`` packed as ``<IfQQ`` (flag, label, id, id2; 24 bytes)
  followed by the image bytes. With ``flag > 0``, ``label`` is stored as 0 and ``flag`` float32
  labels follow the header (a label vector).
* ``train.idx``: one ``"key\\toffset\\n"`` line per record (the byte offset of its magic).
* Record 0 is the header record: ``flag=2``, labels ``(N+1, N+1+C)``, no image -- images are
  records ``1..N``, records ``N+1..N+C`` are identity records whose labels ``(start, end)`` give
  the image range of each class. Image records have ``flag=0`` and the class index as ``label``.
  Sets packed by MXNet's ``im2rec --pack-label`` have no header record: every record is an
  image whose label vector starts with the class. :class:`RecReader` tells the two apart (see
  there) and reads a ``.rec`` whose ``.idx`` does not match it by a sequential scan.
* ``property``: ``"num_classes,H,W"``.

:func:`~maskkit.io.rec_export.export_rec` writes a shard folder (``docs/FORMAT.md``) as such a
set; ``id2`` of an image record is 1 when the face is synthetically masked, 0 otherwise (ignored by other readers), and a
sidecar ``<prefix>.maskkit.json`` says so. :class:`RecReader` reads any such set (``maskkit synth
--src train.rec --aligned`` uses it); when the sidecar is there it lists the masked records in
``masked_keys``, which synth does not mask a second time (they go to its failure log as
``already_masked``). A third-party ``.rec`` has no sidecar and its ``id2`` is ignored.

Example:
    >>> from maskkit.io.rec_export import export_rec
    >>> export_rec("shards/", "rec/")                               # doctest: +SKIP
    >>> r = RecReader("rec/train.rec"); h, img = r.read_record(1)   # doctest: +SKIP
"""
from __future__ import annotations

import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

__all__ = ["MAGIC", "IRHeader", "pack_header", "unpack_header", "RecordWriter", "read_record_at",
           "iter_records", "RecReader", "RecError", "RecTruncatedError", "sidecar_path"]

log = logging.getLogger(__name__)

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_IR_FORMAT = "<IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)  # 24
_LEN_MASK = (1 << 29) - 1


class RecError(ValueError):
    """A malformed ``.rec`` / ``.idx`` file."""


class RecTruncatedError(RecError):
    """A ``.rec`` cut short (a truncated download or copy): it ends inside a record, or its
    ``.idx`` lists records past its end. The set is refused: the records past the cut would be
    lost without a trace (whole identities shrunk or gone)."""


@dataclass
class IRHeader:
    """MXNet image record header.

    Attributes:
        flag: 0 for a scalar label, else the number of float32 labels that follow the header.
        label: scalar label (flag 0) or tuple of labels.
        id: record id.
        id2: second id (maskkit: 1 for a synthetically masked face).
    """

    flag: int
    label: float | tuple
    id: int
    id2: int = 0


def pack_header(header: IRHeader, payload: bytes) -> bytes:
    """``IRHeader`` + (label vector) + payload, as ``mx.recordio.pack`` builds it."""
    if header.flag == 0 and not isinstance(header.label, (tuple, list)):
        return struct.pack(_IR_FORMAT, 0, float(header.label), int(header.id), int(header.id2)) + payload
    labels = tuple(float(x) for x in (header.label if isinstance(header.label, (tuple, list)) else (header.label,)))
    head = struct.pack(_IR_FORMAT, len(labels), 0.0, int(header.id), int(header.id2))
    return head + struct.pack(f"<{len(labels)}f", *labels) + payload


def unpack_header(record: bytes) -> tuple[IRHeader, bytes]:
    """Inverse of :func:`pack_header`: ``(header, payload)``."""
    if len(record) < _IR_SIZE:
        raise RecError(f"record of {len(record)} bytes is shorter than an IRHeader")
    flag, label, id_, id2 = struct.unpack_from(_IR_FORMAT, record)
    off = _IR_SIZE
    if flag > 0:
        if len(record) < off + 4 * flag:
            raise RecError("record shorter than its label vector")
        label = struct.unpack_from(f"<{flag}f", record, off)
        off += 4 * flag
    return IRHeader(flag, label, id_, id2), record[off:]


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


class RecordWriter:
    """Write dmlc RecordIO records plus the ``.idx`` file.

    Args:
        rec_path: the ``.rec`` file to create.
        idx_path: the ``.idx`` file to create (``None``: no index).
    """

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None) -> None:
        self._f = open(rec_path, "wb")
        self._idx = open(idx_path, "w", encoding="ascii") if idx_path is not None else None

    def write(self, key: int, record: bytes) -> int:
        """Append one record (splitting it where the payload holds the magic); returns its offset."""
        pos = self._f.tell()
        if self._idx is not None:
            self._idx.write(f"{int(key)}\t{pos}\n")
        data = memoryview(record)
        size = len(record)
        lower_align = (size >> 2) << 2
        dptr = 0
        # dmlc-core: every 4-byte-aligned occurrence of the magic inside the payload splits the
        # record (the magic is dropped, the reader re-inserts it between parts).
        i = record.find(_MAGIC_BYTES, 0, lower_align)
        while i >= 0:
            if i % 4 == 0:
                self._part(1 if dptr == 0 else 2, data[dptr:i])
                dptr = i + 4
                i = record.find(_MAGIC_BYTES, i + 4, lower_align)
            else:
                i = record.find(_MAGIC_BYTES, i + 1, lower_align)
        self._part(3 if dptr else 0, data[dptr:])
        return pos

    def _part(self, cflag: int, chunk) -> None:
        n = len(chunk)
        if n > _LEN_MASK:
            raise RecError(f"record part of {n} bytes exceeds the 29-bit length field")
        self._f.write(_MAGIC_BYTES)
        self._f.write(struct.pack("<I", (cflag << 29) | n))
        self._f.write(chunk)
        self._f.write(b"\0" * _pad(n))

    def close(self) -> None:
        """Close both files (both are closed even when the first close fails: a full disk)."""
        try:
            self._f.close()
        finally:
            if self._idx is not None:
                self._idx.close()

    def __enter__(self) -> "RecordWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_record_at(f, offset: int | None = None) -> bytes | None:
    """Read one (possibly split) record from an open binary file; ``None`` at end of file."""
    if offset is not None:
        f.seek(offset)
    parts: list[bytes] = []
    while True:
        head = f.read(8)
        if not head:
            if parts:
                raise RecError("file ends inside a split record")
            return None
        if len(head) < 8:
            raise RecError("truncated record header")
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise RecError(f"bad magic 0x{magic:08x} at offset {f.tell() - 8}")
        cflag, n = lrec >> 29, lrec & _LEN_MASK
        data = f.read(n)
        if len(data) < n:
            raise RecError("truncated record payload")
        f.read(_pad(n))
        if cflag == 0:
            if parts:
                raise RecError("whole record inside a split record")
            return data
        if cflag == 1:
            parts = [data]
        elif not parts:
            raise RecError(f"continuation part (cflag {cflag}) without a first part")
        else:
            parts.append(_MAGIC_BYTES)
            parts.append(data)
        if cflag == 3:
            return b"".join(parts)


def iter_records(rec_path: str | os.PathLike) -> Iterator[tuple[int, bytes]]:
    """Yield ``(offset, record)`` for every record of a ``.rec`` file, scanning it sequentially."""
    with open(rec_path, "rb") as f:
        while True:
            off = f.tell()
            r = read_record_at(f)
            if r is None:
                return
            yield off, r


def sidecar_path(rec_path: str | os.PathLike) -> Path:
    """``<prefix>.maskkit.json`` beside ``<prefix>.rec``: marks a maskkit export (id2 = 1: masked)."""
    return Path(rec_path).with_suffix(".maskkit.json")


class RecReader:
    """Random access to an insightface ``.rec`` (with its ``.idx`` when present).

    The ``.idx`` is checked against the ``.rec``: every offset must hold a record start (the
    magic, a first or whole part). A ``.idx`` that does not match (written for another ``.rec``,
    or the ``.rec`` re-packed) is reported once (a warning naming the ``.idx``) and the ``.rec``
    is read by a sequential scan instead, its records keyed ``0, 1, ...`` in file order.

    Record 0 is taken as insightface's header record only when it is one: a label vector
    ``(a, b)`` of whole numbers with no image payload and a range that fits the records
    (``1 <= a <= b``, and the ``a - 1`` images fit in the records after record 0). Such a
    record whose range reaches past the last record held (a ``.rec`` cut at a record boundary,
    or a cut ``.idx``) refuses the set (:class:`RecTruncatedError`). Images are then keys ``1 .. a-1``, as
    insightface's ``MXFaceDataset`` reads them; when the keys present disagree with that range
    a warning says how. Anything else -- e.g. a set packed by ``im2rec --pack-label``, where
    record 0 is the first image with a label vector -- has no header and every record is an
    image.

    Attributes:
        offsets: ``{key: offset}``.
        image_keys: keys of the image records (``1..N`` when record 0 is a header record,
            else every key).
        header0: ``(a, b)`` of the header record, or None when record 0 is not a header.
        index_source: ``"idx"`` (offsets from the ``.idx``) or ``"scan"`` (sequential scan:
            no ``.idx``, or one that does not match).
        warnings: the warnings logged while opening / scanning (one line each).
        labels: class index per image key (filled by :meth:`scan_labels`).
        masked_keys: image keys whose face maskkit masked (``id2 == 1`` in a set with a
            ``<prefix>.maskkit.json`` sidecar; filled by :meth:`scan_labels`, else empty).

    Raises:
        FileNotFoundError: no ``.rec`` file.
        RecError: a ``.rec`` that cannot be read even by a sequential scan (bad magic inside it).
            An unparsable ``.idx`` is a ``.idx`` that does not match: warning, sequential scan.
        RecTruncatedError: a ``.rec`` cut short (it ends inside a record, or the offsets of its
            ``.idx`` that lie inside it hold records and others lie past its end); the message
            says how many records the ``.idx`` lists and how many are readable; or its header
            record's range ``(a, b)`` reaches past the last record the ``.rec`` / ``.idx`` holds
            (a cut at a record boundary, a cut ``.idx``): the message says how many records the
            header lists and how many are readable. A set without a header record (every record
            an image) has nothing to compare with and is read as it is.
    """

    #: offsets checked when the reader opens (evenly spread); :meth:`scan_labels` checks all
    OPEN_CHECKS = 64

    def __init__(self, rec_path: str | os.PathLike, idx_path: str | os.PathLike | None = None) -> None:
        self.rec_path = Path(rec_path)
        if not self.rec_path.is_file():
            raise FileNotFoundError(f"{self.rec_path} does not exist")
        idx = Path(idx_path) if idx_path else self.rec_path.with_suffix(".idx")
        self.idx_path: Path | None = idx if idx.is_file() else None
        self.warnings: list[str] = []
        self._size = self.rec_path.stat().st_size
        self.sidecar = sidecar_path(self.rec_path)
        self.masked_keys: set[int] = set()
        self._f = open(self.rec_path, "rb")
        self.offsets: dict[int, int] = {}
        self.index_source = "scan"
        if self.idx_path is not None:
            try:
                self.offsets = _read_idx(self.idx_path)
            except RecError as exc:
                bad: str | None = str(exc)
            else:
                bad = self._check_idx()
            self.index_source = "idx"
            if bad is not None:
                self._fall_back_to_scan(bad)
        else:
            self.offsets = self._scan_offsets()
        self._find_header()

    # ---- index ------------------------------------------------------------------------------
    def _scan_offsets(self) -> dict[int, int]:
        """``{record number: offset}`` by a sequential scan; a truncated last record is dropped
        with a warning (the records before it are kept)."""
        out: dict[int, int] = {}
        with open(self.rec_path, "rb") as f:
            i = 0
            while True:
                off = f.tell()
                try:
                    r = read_record_at(f)
                except RecError as exc:
                    if "truncated" in str(exc) or "ends inside" in str(exc):
                        raise RecTruncatedError(
                            f"{self.rec_path} is truncated: it ends at byte {self._size:,}, inside record {i} "
                            f"(which starts at byte {off:,}); {i:,} whole records are readable"
                            f"{self._header_images_note()}, the records past the cut are lost; "
                            "re-download or re-copy it") from None
                    raise RecError(f"{self.rec_path}: {exc} (record {i}); the file is corrupt") from None
                if r is None:
                    return out
                out[i] = off
                i += 1

    def _check_idx(self) -> str | None:
        """Why the ``.idx`` does not match the ``.rec`` (None: it matches, on a spread sample of
        its offsets).

        Raises:
            RecTruncatedError: the ``.idx``'s offsets inside the file hold record starts, but
                some lie past its end or its last record is cut short: the ``.rec`` was cut
                (a truncated download or copy), and the records past the cut are lost.
        """
        keys = sorted(self.offsets)
        if not keys:
            return "it lists no record"
        inside = [k for k in keys if 0 <= self.offsets[k] and self.offsets[k] + 8 <= self._size]
        past = len(keys) - len(inside)
        last = max(inside, key=self.offsets.__getitem__) if inside else None
        cut = last is not None and not self._whole_at(self.offsets[last])
        if not past and not cut:
            step = max(1, len(keys) // self.OPEN_CHECKS)
            return self._first_bad_offset(sorted(set(keys[::step] + keys[-1:])))
        step = max(1, len(inside) // self.OPEN_CHECKS)
        bad = self._first_bad_offset(sorted(set(inside[::step] + inside[-1:]))) if inside else None
        if bad is not None or not inside:
            # offsets inside the file that hold no record (or none inside it): another set's .idx
            return bad or f"every key points past the end of the {self._size}-byte .rec"
        whole = len(inside) - int(cut)
        where = (f"it ends at byte {self._size:,}, inside the record of key {last}" if cut
                 else f"it ends at byte {self._size:,}, before the offsets of {past:,} key(s)")
        raise RecTruncatedError(f"{self.rec_path} is truncated: {self.idx_path.name} lists {len(keys):,} records"
                                f"{self._header_images_note()}, {whole:,} are readable ({where}); "
                                "re-download or re-copy it")

    def _whole_at(self, off: int) -> bool:
        """Whether a whole record (all of its parts) lies at ``off``."""
        try:
            return read_record_at(self._f, off) is not None
        except RecError:
            return False

    def _header_images_note(self) -> str:
        """``" (1,066 images by its header record)"`` when record 0 at byte 0 is a header-like
        record (a label vector, no image), else ``""``: said in the truncation message."""
        try:
            r = read_record_at(self._f, 0)
            h, payload = unpack_header(r) if r is not None else (None, b"")
        except RecError:
            return ""
        if h is None or h.flag < 2 or payload:
            return ""
        a = h.label[0]
        return f" ({int(a) - 1:,} images by its header record)" if float(a).is_integer() and a >= 1 else ""

    def _first_bad_offset(self, keys) -> str | None:
        """Why the first of ``keys`` whose offset holds no record start fails, or None."""
        seen: set[int] = set()
        for k in keys:
            off = self.offsets[k]
            if off < 0 or off + 8 > self._size:
                return f"key {k} points at byte {off}, past the end of the {self._size}-byte .rec"
            if off % 4:
                return f"key {k} points at byte {off}, not a 4-byte boundary"
            if off in seen:
                return f"two keys point at byte {off}"
            seen.add(off)
            self._f.seek(off)
            magic, lrec = struct.unpack("<II", self._f.read(8))
            if magic != MAGIC or (lrec >> 29) not in (0, 1):
                return f"key {k} points at byte {off}, which is not the start of a record"
        return None

    def _fall_back_to_scan(self, why: str) -> None:
        self._warn(f"{self.idx_path} does not match {self.rec_path.name} ({why}); reading "
                   f"{self.rec_path.name} by a sequential scan instead (records keyed 0.. in file order)")
        self.offsets = self._scan_offsets()
        self.index_source = "scan"

    def _warn(self, msg: str) -> None:
        self.warnings.append(msg)
        log.warning("%s", msg)

    # ---- header record ------------------------------------------------------------------------
    def _find_header(self) -> None:
        """Decide whether record 0 is a header record and set :attr:`image_keys`."""
        self.header0: tuple[int, int] | None = None
        keys = sorted(self.offsets)
        if 0 not in self.offsets:
            self.image_keys = keys
            return
        h, payload = unpack_header(self.read(0))
        lab = h.label if isinstance(h.label, tuple) else (h.label,)
        if h.flag == 0 or payload or len(lab) < 2:
            self.image_keys = keys  # record 0 is an image (e.g. im2rec --pack-label): no header
            return
        a, b = lab[0], lab[1]
        n = len(keys)
        header_like = h.flag >= 2 and float(a).is_integer() and float(b).is_integer() and 1 <= a <= b
        if header_like and b - 1 > keys[-1]:
            # insightface's header (no image, a whole-number range) pointing past the last record held:
            # a .rec cut at a record boundary, or a cut .idx -- the records past the cut would be lost
            self._refuse_short(int(a), int(b), keys)
        # the image range 1..a-1 must fit in the n - 1 records after record 0
        fits = header_like and a - 1 <= n - 1
        if not fits:
            self._warn(f"{self.rec_path.name}: record 0 has no image and the label range ({a:g}, {b:g}), which "
                       f"does not fit the {n} records: not taken as a header; every other record is read as an "
                       f"image")
            self.image_keys = [k for k in keys if k != 0]
            return
        a, b = int(a), int(b)
        self.header0 = (a, b)
        self.image_keys = [k for k in range(1, a) if k in self.offsets]
        missing = (a - 1) - len(self.image_keys)
        no_ident = sum(1 for k in range(a, b) if k not in self.offsets)
        beyond = [k for k in keys if k >= b]
        if missing or no_ident or beyond:
            src = self.idx_path if self.index_source == "idx" else f"the records of {self.rec_path.name}"
            parts = []
            if missing:
                parts.append(f"{missing} of its image keys 1..{a - 1} are absent")
            if no_ident:
                parts.append(f"{no_ident} of its identity keys {a}..{b - 1} are absent")
            if beyond:
                parts.append(f"{len(beyond)} record(s) lie beyond its range (keys {beyond[0]}..{beyond[-1]}, not read)")
            self._warn(f"{self.rec_path.name}: the header record says {a - 1} images (keys 1..{a - 1}) and "
                       f"{b - a} identity records (keys {a}..{b - 1}), but in {src} " + " and ".join(parts))

    def _refuse_short(self, a: int, b: int, keys: list[int]) -> None:
        """Raise :class:`RecTruncatedError`: the header's range ``(a, b)`` reaches past the last record held."""
        more = False
        if self.index_source == "idx":  # does the .rec go on past the last record its .idx lists?
            read_record_at(self._f, self.offsets[keys[-1]])
            more = self._f.tell() < self._size
        where = (f"{self.idx_path.name} lists {len(keys):,}, but {self.rec_path.name} continues past its last "
                 "record: the .idx was cut (delete it to read the .rec by a sequential scan, or re-download both)"
                 if more else f"{self.rec_path.name} ends at byte {self._size:,}, after {len(keys):,} whole "
                 "records: re-download or re-copy it")
        raise RecTruncatedError(f"{self.rec_path} is truncated: its header record lists {b:,} records ({a - 1:,} "
                                f"images, {b - a:,} identity records), {sum(k < b for k in keys):,} are readable; {where}")

    # ---- reading ------------------------------------------------------------------------------
    def read(self, key: int) -> bytes:
        """The raw record (IRHeader + payload) of ``key``."""
        r = read_record_at(self._f, self.offsets[key])
        if r is None:
            raise RecError(f"record {key} is past the end of {self.rec_path}")
        return r

    def read_record(self, key: int) -> tuple[IRHeader, bytes]:
        """``(header, image bytes)`` of ``key``."""
        return unpack_header(self.read(key))

    @staticmethod
    def label_of(header: IRHeader) -> int:
        """The class index of an image record: ``label``, or the first entry of a label vector
        (``im2rec --pack-label`` puts the class first)."""
        lab = header.label
        return int(lab[0] if isinstance(lab, tuple) else lab)

    def _head_at(self, key: int) -> tuple[int, float, int, int] | None:
        """``(flag, class label, id, id2)`` of ``key`` from its first bytes, or None when its
        offset holds no record start."""
        off = self.offsets[key]
        if off + 8 > self._size:
            return None
        self._f.seek(off)
        head = self._f.read(8 + _IR_SIZE + 4)
        magic, lrec = struct.unpack_from("<II", head)
        cflag, n = lrec >> 29, lrec & _LEN_MASK
        if magic != MAGIC or cflag not in (0, 1):
            return None
        if cflag == 1 or n < _IR_SIZE + 4 or len(head) < 8 + _IR_SIZE + 4:  # split or short: read it whole
            h, _ = unpack_header(self.read(key))
            return h.flag, float(self.label_of(h)), h.id, h.id2
        flag, label, id_, id2 = struct.unpack_from(_IR_FORMAT, head, 8)
        if flag > 0:
            label = struct.unpack_from("<f", head, 8 + _IR_SIZE)[0]
        return flag, label, id_, id2

    def scan_labels(self) -> dict[int, int]:
        """``{image key: class index}``, reading only the 24-byte headers (plus label vectors).

        Every offset is checked here; a ``.idx`` that turns out not to match falls back to the
        sequential scan (one warning) and the labels are read again. Also fills
        :attr:`masked_keys` when the set is a maskkit export (its sidecar exists)."""
        id2_marks_masks = self.sidecar.is_file()
        while True:
            out: dict[int, int] = {}
            self.masked_keys = set()
            bad = None
            for k in self.image_keys:
                head = self._head_at(k)
                if head is None:
                    bad = k
                    break
                _, label, _, id2 = head
                out[k] = int(label)
                if id2_marks_masks and id2 == 1:
                    self.masked_keys.add(k)
            if bad is None:
                return out
            if self.index_source != "idx":
                raise RecError(f"{self.rec_path}: record {bad} does not start at its scanned offset")
            self._fall_back_to_scan(f"key {bad} points at byte {self.offsets[bad]}, which is not the start of a record")
            self._find_header()

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "RecReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _read_idx(idx: Path) -> dict[int, int]:
    """``{key: offset}`` from a ``key<TAB>offset`` index file."""
    out: dict[int, int] = {}
    with open(idx, encoding="ascii", errors="replace") as f:
        for ln, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                k, o = line.split("\t")
                out[int(k)] = int(o)
            except ValueError:
                raise RecError(f"{idx}:{ln}: not 'key<TAB>offset': {line[:60]!r}") from None
    return out
