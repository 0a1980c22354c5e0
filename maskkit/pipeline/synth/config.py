"""Synth configuration (:class:`SynthConfig`), its error type and the style/stage names."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from maskkit import __version__

#: Version of the rules that decide synth's output bytes (selection, styles, seeding, alignment,
#: crop checks, encoding). It is part of the run fingerprint, so a run started under older rules is
#: never resumed under newer ones. Bump it with every change that alters shard contents.
#: History: 1 = the first landing's rules; 2 = ``.rec`` inputs: record 0 is a header only when it
#: is one (an ``im2rec --pack-label`` set keeps its record 0 and every later record), a ``.idx``
#: that does not match its ``.rec`` is replaced by a sequential scan (issue 12 §4).
#: 3 = ``.jfif``/``.jpe``/``.jif`` files are JPEG inputs (were left out); file and identity names
#:     that are not UTF-8 are inputs (keys and seeds hash their bytes; shard JSON ``src`` is the
#:     display form with ``src_bytes``; were a crash) (issue 12 §2). Valid-name sets without
#:     those extensions give the same shard bytes as version 2.
#: 4 = leftover styles (the m % K beyond m // K of each identity) go to the next styles in class
#:     order from a running offset kept in the journal, not to random ones: over the whole set the
#:     styles' counts differ by at most 1 (issue 10).
#: 5 = faces (issue 12 §5-§7): HOG's second look at near-threshold detections, the landmark
#:     check and its recovery (checked landmarks are the mean of agreeing fits), ``--aligned``
#:     crops checked (size/aspect, a face, on the template) and failed as ``not_aligned`` /
#:     ``no_face``.
#: 6 = sizes divisible by both 112 and 128 (896, 1792, ...) take insightface's 112-based template
#:     (``estimate_norm``; was the 128-based one, up to 92 px away) (issue 11).
#: 7 = inputs (issue 12 §2): a symbolic link to a file that is an input already is skipped
#:     ``duplicate_via_link`` (was a second sample of the same photo); files directly in ``--src``
#:     take class ``_root~2`` (``~3``, ...) when a folder is named ``_root`` (were merged into it).
#:     Sets with neither give the same shard bytes as version 6.
#: 8 = faces (issue 12 §6): BlazeFace fits in the box of an upright look (its keypoints level,
#:     upside-down faces turned over); a weak HOG detection whose fit only the orientation search
#:     found must be a face for dlib's CNN, upright. Default HOG runs without such detections give
#:     the same shard bytes as 7.
#: 9 = ``--aligned``: the template test stops after its first rotated refit when that one moves
#:     the 5 points by at most ``CROP_SURE_TOL`` (or by more than ``CROP_TOL``); 7 of the 2,223
#:     celeb-aligned crops are now kept by the template fit (before: by a detected face, with
#:     other landmarks in 6 of them). No verdict changed on ``benchmarks/crop_check.py``.
#: 10 = ``--aligned`` (issue 12 §5): each sample's JSON records how the crop check kept it
#:     (``crop_check``: ``how`` template / detected / unverified, ``rms``, ``spread``); an
#:     unverified crop whose face is turned more than 25 degrees in-plane is ``not_aligned``
#:     (was a sample) (``maskkit.pipeline.unverified``). Runs without ``--aligned`` give the same
#:     shard bytes as 9.
#: 11 = masks on turned heads (issue 18): the renderer (``maskkit.render.anchors``) keeps the top
#:     edge ``EYE_CLEAR`` below the eyes, closes the sides round the nose tip, lips and chin (a
#:     near-profile whose far jaw meets the lip line just inside the far mouth corner is masked,
#:     was ``jaw_misses_lip_line``), and on heads turned past 15 degrees (``maskkit.render.pose``)
#:     keeps the far side within the mean head's silhouette. Every masked sample's pixels change.
#: 12 = ``--aligned`` (issue 18, speed): a crop whose template fit is unstable and in which HOG
#:     finds no face is looked at by BlazeFace and the face mesh before dlib's CNN (when the
#:     ``blazeface`` extra is installed; ``maskkit.face.crop_check.BLAZE_CROP_UPRIGHT_GAP``): on
#:     ``benchmarks/crop_check.py`` no crop changes between kept / ``no_face`` / ``not_aligned``;
#:     a few kept crops change between ``detected`` and ``unverified`` and their landmarks (the fit
#:     is made in BlazeFace's box, not the CNN's). Runs without ``--aligned`` give the same shard
#:     bytes as 11.
#: 13 = a greyscale input (R == G == B) gets a grey mask (``params["grey"]``), not a coloured one
#:     (``maskkit.render.renderer``). Colour inputs give the same shard bytes as 12.
#: 14 = ``--faces largest``: a weak largest face whose landmarks fail is passed over only for a
#:     candidate at least half its area (``maskkit.face.selection.PASS_OVER_MIN_AREA``), else it is
#:     recorded (``bad_landmarks``) rather than a smaller bystander masked in its place.
#: 15 = images of at most 4 colours (1-bit scans, small palettes) are read low-passed
#:     (``maskkit.io.image_io.descreen``), and ``--faces largest``/``central`` choose among the
#:     checked faces by their landmarks' box inside the image (``maskkit.face.selection.final_box``).
#: 16 = ``--aligned`` (issue 20): a HOG-found face whose checked fit is far from the template makes
#:     the crop ``not_aligned`` only when the detector confirms it (box over the crop's centre; a
#:     tilted fit needs HOG's turned sub-detector: ``maskkit.face.crop_check.CROP_LEVEL_ANGLE``),
#:     else it is kept ``unverified`` (re-saved occluded crops were ``not_aligned``).
#: 17 = ``--aligned`` (issue 18, speed): when BlazeFace saw an
#:     upright face in a crop its own look could not settle, dlib's CNN looks at the crop unpadded
#:     (``maskkit.face.crop_check.CNN_UPRIGHT_PAD``; 2.4x cheaper). On ``benchmarks/crop_check.py``
#:     no crop changes between kept / ``no_face`` / ``not_aligned``; 8 celeb crops change between
#:     ``detected`` and ``unverified`` (4 each way, all kept by synth: tilt 7.5 degrees at most)
#:     and 10 kept crops change landmarks (the fit is made in the CNN's new box). Runs without
#:     ``--aligned`` give the same shard bytes as 16.
#: 18 = a checked face whose detection box holds most of a much smaller checked face is rejected
#:     (``maskkit.face.selection.HOLDS_FACE``): with BlazeFace, ``--faces largest`` kept a woman's
#:     neck and chest over her face (real-masked 0001/0177.jpg). Runs whose images hold no such
#:     pair (every HOG run measured) give the same shard bytes as 17.
#: 19 = a ``.rec`` of ``maskkit export-rec`` takes its class names from its sidecar
#:     (``<prefix>.maskkit.json`` ``classes``; were numbered ``0..C-1``), and a ``.rec`` cut short
#:     (ends inside a record, or its ``.idx`` lists records past its end) is refused (was read up
#:     to the cut). Other inputs give the same shard bytes as 18.
ALGORITHM_VERSION = 19

#: The five mask styles (same as ``maskkit.render.STYLES``; repeated so importing this module
#: stays light).
ALL_STYLES = ("surgical", "n95", "kn95", "cloth", "gas")


JOURNAL = ".synth-journal.jsonl"


#: Worker stages timed in the summary; ``landmarks`` replaces ``detect`` with ``--aligned``
#: (no detection: the 68 landmarks are fitted in the crop's fixed face box).
STAGES = ("decode", "detect", "landmarks", "render", "align", "encode")


class SynthError(RuntimeError):
    """The run cannot proceed (bad options, an output folder holding a different run, ...)."""


@dataclass
class SynthConfig:
    """Options of one ``maskkit synth`` run (one dataclass per command).

    Attributes:
        src: identity tree (``<identity>/<images>``), a folder of aligned crops with
            ``aligned=True``, or an insightface ``.rec`` file (needs ``aligned=True``).
        out: output shard folder.
        ratio: fraction of each identity's accepted faces that get a mask (0..1), exact per
            identity up to ``round_half_up``.
        paired: write the plain version of every face, plus a masked twin for the chosen ones.
        styles: mask styles to balance over (default: all five). May be empty when ``ratio``
            is 0 (``maskkit align --format shards``).
        seed: global seed.
        jobs: worker processes (local backend); ``0`` or ``-1`` = as many as pay off: one per
            ``maskkit.pipeline.synth.backends.FILES_PER_WORKER`` input files, up to all cores
            (a small job runs in this process).
        aligned: input faces are already aligned crops (no detection, no re-alignment; crops of
            another size are resized to ``size``).
        size: output ``(H, W)``: 16..4096 a side, a square or 112x96
            (:func:`maskkit.face.align.parse_size`; ``ValueError`` otherwise).
        shard_samples: samples per shard.
        backend: ``local`` (joblib processes), ``dask`` or ``ray``.
        address: scheduler address for ``dask`` (``tcp://host:8786``) or ``ray``.
        detector: face detector backend name (``maskkit.face.detect``).
        detector_opts: options for the detector. Default for hog/cnn ``{"max_side": 640}``: detection runs
            on a copy downscaled to 640 px on its longest side (landmarks and everything after
            at full resolution) -- 2.3x faster than 1024 on full photos, and the one face per
            image that synth keeps is large in VGGFace2/CASIA-style loose crops.
        faces: ``largest`` (default), ``central`` or ``all``.
        quality: JPEG quality.
        mask_png: write ``KEY.mask.png`` for masked samples.
        max_pixels: refuse larger input images (``too_large``).
        split: shard name prefix.
        overwrite: delete a previous, different run in ``out`` instead of refusing.
        progress: show a progress bar.
        progress_desc: the progress bar's label (``align`` for ``maskkit align --format shards``).
        command: the command line recorded in the manifest.
        preview: also write a contact sheet PNG here; an existing file is refused (before any input
            is read) unless ``overwrite``; a finished run found again draws none.
        on_boundary: called by the driver as ``on_boundary(event, index)`` at each write boundary:
            ``("before_rename", k)`` when shard ``k`` is complete under its ``.tmp`` name,
            ``("after_rename", k)`` once it has its final name (not yet in the journal),
            ``("chunk_logged", i)`` after identity chunk ``i`` is in the journal,
            ``("before_manifest", -1)`` after the failure logs, before ``manifest.json``, and
            ``("after_manifest", -1)`` before the journal is removed. For tests that kill a run at
            each boundary (``tests/test_synth.py``); never sent to workers, not part of the
            fingerprint, no cost when ``None``.
    """

    src: Path
    out: Path
    ratio: float = 0.5
    paired: bool = False
    styles: tuple[str, ...] | None = None
    seed: int = 0
    jobs: int = 1
    aligned: bool = False
    size: tuple[int, int] = (112, 112)
    shard_samples: int = 10000
    backend: str = "local"
    address: str | None = None
    detector: str = "hog"
    detector_opts: dict | None = None
    faces: str = "largest"
    quality: int = 95
    mask_png: bool = True
    max_pixels: int = 100_000_000
    split: str = "train"
    overwrite: bool = False
    progress: bool = True
    progress_desc: str = "synth"
    command: str | None = None
    preview: Path | None = None
    on_boundary: Callable[[str, int], None] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.src = Path(self.src)
        self.out = Path(self.out)
        if isinstance(self.size, int):
            self.size = (self.size, self.size)
        self.size = (int(self.size[0]), int(self.size[1]))
        from maskkit.face.align import parse_size

        parse_size(f"{self.size[0]}x{self.size[1]}")  # ValueError: out of 16..4096, or no template's size
        if self.styles is None:
            self.styles = ALL_STYLES
        self.styles = tuple(self.styles)
        if self.detector_opts is None:
            self.detector_opts = {"max_side": 640} if self.detector in ("hog", "cnn") else {}

    def validate(self) -> None:
        """Raise :class:`SynthError` for inconsistent options."""
        if not 0.0 <= self.ratio <= 1.0:
            raise SynthError(f"--ratio must be in [0, 1], got {self.ratio}")
        bad = [s for s in self.styles if s not in ALL_STYLES]
        if bad:
            raise SynthError(f"unknown style(s) {', '.join(bad)}; choose from {', '.join(ALL_STYLES)}")
        if len(set(self.styles)) != len(self.styles):
            raise SynthError("--styles lists a style twice")
        if self.ratio > 0 and not self.styles:
            raise SynthError("--ratio > 0 needs at least one style")
        if self.shard_samples < 1:
            raise SynthError("--shard-samples must be >= 1")
        if self.faces not in ("largest", "central", "all"):
            raise SynthError(f"--faces must be largest, central or all, not {self.faces!r}")
        if self.backend not in ("local", "dask", "ray"):
            raise SynthError(f"--backend must be local, dask or ray, not {self.backend!r}")
        if not 1 <= self.quality <= 100:
            raise SynthError("--quality must be in 1..100")
        if not self.src.exists():
            raise SynthError(f"--src {self.src} does not exist")
        if self.src.is_file() and self.src.suffix.lower() == ".rec" and not self.aligned:
            raise SynthError(f"{self.src} is an insightface .rec of aligned crops: pass --aligned")
        if self.src.is_file() and self.src.suffix.lower() != ".rec":
            raise SynthError(f"--src {self.src} must be a folder or a .rec file")

    def fingerprint_fields(self) -> dict:
        """Options that change the output bytes (a resumed run must match them)."""
        from maskkit.util.names import name_fields

        return {
            **name_fields(str(self.src.resolve())), "ratio": self.ratio, "paired": self.paired,
            "styles": list(self.styles), "seed": self.seed, "aligned": self.aligned,
            "size": list(self.size), "shard_samples": self.shard_samples, "detector": self.detector,
            "detector_opts": self.detector_opts, "faces": self.faces, "quality": self.quality,
            "mask_png": self.mask_png, "max_pixels": self.max_pixels, "split": self.split,
            "version": __version__, "algorithm": ALGORITHM_VERSION,
        }
