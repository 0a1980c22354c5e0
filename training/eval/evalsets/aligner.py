"""Bringing any face image to a 112x112 ArcFace-template crop: :class:`FaceAligner`."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from maskkit.io.crop_template import TemplateRefused, says_template, to_template

from maskkit.training.eval.evalsets.sets import IMAGE_SIZE, exc_reason, failure_record, template_note


class AlignFailure(ValueError):
    """An image that cannot be aligned: ``reason`` is a short token (``no_face``,
    ``bad_landmarks``), ``detail`` explains it."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class FaceAligner:
    """Bring any face photo to a 112x112 ArcFace-template crop with maskkit's aligner.

    * Images already at ``size`` are checked against the template
      (``maskkit.face.crop_check.check_aligned_crop``): a crop on the template is used as it is; a
      crop whose face is off the template is re-aligned from its checked landmarks (note
      ``realigned: ...``); a crop with a face whose landmarks cannot be verified (profiles) is
      kept as given (note ``unverified: ...``); a crop without a face fails ``no_face``, one of
      the wrong size ``not_aligned``. ``trust_aligned`` (the commands' ``--aligned``) skips the
      check and takes every ``size`` crop as it is (insightface ``.bin`` sets never come here:
      they are aligned by construction).
    * Images whose size says another template (:func:`maskkit.io.crop_template.says_template`:
      insightface's 128 family, 224, 256...) are brought onto the template of ``size``
      (:func:`maskkit.io.crop_template.to_template`: a 128x128 crop keeps its columns 8..119,
      no resampling) and used when the check finds the face on it, with the note ``template:
      <what was done>; on the template (checked)`` -- or, with ``trust_aligned``, unchecked
      (``...; trusted (--aligned)``). A face the check cannot confirm on the template (off it,
      unverified, none) is aligned from the original image as any photo is: an image of such a
      size need not be a crop.
    * Others go through ``maskkit.face.selection.find_faces`` (HOG detector by default, the
      largest face, landmarks checked) and ``maskkit.face.align.align_face``. No face fails
      ``no_face``, landmarks that are not on the face ``bad_landmarks``: guessing would embed and
      score photos without a usable face.

    Models load once, on first use.
    """

    def __init__(self, detector: str = "hog", size: tuple[int, int] = IMAGE_SIZE, policy: str = "largest",
                 trust_aligned: bool = False):
        self.detector_name = detector
        self.size = tuple(size)
        self.policy = policy
        self.trust_aligned = bool(trust_aligned)
        self._detector = None

    def _get_detector(self):
        if self._detector is None:
            from maskkit.face.detect import get_detector

            self._detector = get_detector(self.detector_name)
        return self._detector

    def _crop(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, str | None]:
        from maskkit.face.align import align_face
        from maskkit.face.crop_check import check_aligned_crop

        chk = check_aligned_crop(rgb, self.size)
        if chk.ok:
            lm = None if chk.landmarks68 is None else np.asarray(chk.landmarks68, np.float32)
            if chk.how == "unverified":  # the numbers as in maskkit.pipeline.unverified.crop_record
                fit = "" if chk.rms is None else f"; its unstable fit {chk.rms:.1f} px RMS from the template"
                return rgb, None, (f"unverified: a face whose landmarks cannot be checked against the template "
                                   f"(profile or occlusion{fit}); used as given")
            return rgb, lm, None
        if chk.reason == "not_aligned" and chk.landmarks68 is not None:
            aligned = align_face(rgb, chk.landmarks68, size=self.size)
            return aligned.image, np.asarray(aligned.landmarks68, np.float32), f"realigned: {chk.detail}"
        raise AlignFailure(chk.reason or "not_aligned", chk.detail)

    def _other_template(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, str] | None:
        """A crop of another template size on the template of ``size``, with its note; None when
        it cannot be brought there or its face is not found on the template (then it is aligned
        as a photo)."""
        from maskkit.face.crop_check import check_aligned_crop

        try:
            crop, change = to_template(rgb, self.size)
        except TemplateRefused:
            return None
        if self.trust_aligned:
            return crop, None, template_note(change.describe(), "trusted (--aligned)")
        chk = check_aligned_crop(crop, self.size)
        if not chk.ok or chk.how == "unverified":
            return None
        lm = None if chk.landmarks68 is None else np.asarray(chk.landmarks68, np.float32)
        return crop, lm, template_note(change.describe(), "on the template (checked)")

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, str | None]:
        """Align one RGB image.

        Returns:
            ``(aligned_rgb, landmarks68_in_aligned_pixels_or_None, note_or_None)``; the note says
            what was done when it was not the default for the image's kind (``kind: detail``,
            :data:`~maskkit.training.eval.evalsets.sets.NOTE_KINDS`: ``realigned``,
            ``unverified``, ``template``).

        Raises:
            AlignFailure: (a ``ValueError``) reason ``no_face`` when there is no face,
                ``bad_landmarks`` when its landmarks are not on the face, ``not_aligned`` for a
                crop-sized image that is not a crop.
        """
        if rgb.shape[:2] == self.size:
            if self.trust_aligned:
                return rgb, None, None
            return self._crop(rgb)
        if says_template(rgb.shape):
            got = self._other_template(rgb)
            if got is not None:
                return got
        from maskkit.face.align import align_face
        from maskkit.face.selection import find_faces

        faces = find_faces(self._get_detector(), rgb, self.policy)
        if not faces:
            raise AlignFailure("no_face", f"no face found ({self.detector_name} detector) in a "
                               f"{rgb.shape[1]}x{rgb.shape[0]} image")
        face = faces[0]
        if face.fit is not None and not face.fit.ok:
            raise AlignFailure("bad_landmarks", face.fit.detail)
        lm = None if face.landmarks68 is None else np.asarray(face.landmarks68, np.float32)
        if lm is None or not np.all(np.isfinite(lm)):
            raise AlignFailure("bad_landmarks", "no finite landmarks for the detected face")
        aligned = align_face(rgb, lm, size=self.size)
        return aligned.image, np.asarray(aligned.landmarks68, np.float32), None


def _load_and_align(path: Path, aligner: FaceAligner) -> tuple[np.ndarray, np.ndarray | None, str | None]:
    from maskkit.io.image_io import load_image

    rgb = load_image(path)
    return aligner(rgb)


def _load_or_fail(path: Path, rel: str, aligner: FaceAligner) -> tuple[tuple | None, dict | None]:
    """``((aligned, landmarks68, note), None)``, or ``(None, failure)`` with the reason."""
    try:
        return _load_and_align(path, aligner), None
    except Exception as exc:  # noqa: BLE001 - recorded with its reason
        return None, failure_record(rel, *exc_reason(exc))

