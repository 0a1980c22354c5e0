"""Evidence that might tell BlazeFace's non-faces from real masked faces (issue 20: the ear at
real-masked 0002/0014.jpg that passes the landmark checks).

For every face ``find_faces(make_detector("blazeface"), rgb, "all")`` accepts on real-masked (the
faces ``benchmarks/detect_rate.py --backends blazeface`` counts) it computes, and prints as
percentiles against the hand-labelled non-faces in :data:`NON_FACES` (found by viewing the small
accepted crops):

- ``kp_eye``: dlib's eye centres vs BlazeFace's eye keypoints (fraction of the keypoints' IOD);
- ``nose_y``, ``ear_l_x``, ``ear_r_x``: BlazeFace's keypoints in the frame of its eye line (IOD
  units from the eyes' midpoint: nose below the eye line; each ear keypoint across);
- ``mesh_presence``, ``mesh_eye``, ``mesh_nose``: MediaPipe's face mesh looked at the candidate
  (1.4x its box, levelled by the fit's eyes, then MediaPipe's second look from the mesh's own
  points) — its presence score and its eye / nose-tip distance from dlib's (fraction of dlib's IOD);
- ``ctx3_score``, ``ctx4_score``, ``ctx3_eye``: BlazeFace again on a 256 px copy in which the box
  is 1/3 (1/4) of the side (more context), its best score for a face there, and its eye keypoints'
  distance from dlib's eyes (IOD);
- ``symmetry``: normalised correlation of the levelled eye-to-nose region with its mirror image;
- ``shape``: Procrustes distance of the 68 points from the mean shape of keypoint-vouched fits;
- ``kp_iod_box``: BlazeFace's eye-keypoint distance over its box side (a profile's eyes close up);
- ``hog_upright``, ``cnn_upright``: dlib's HOG and CNN detectors looking again at the copy the fit
  makes upright (``HogDetector.second_look_score``, ``CnnDetector.upright_score``; 0 or -1 when
  they see no face there, the value a face that scores nothing gets);
- ``descriptor_knn``: dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``,
  shipped by face-recognition-models) on the fit's face chip: mean distance of its 128-D
  descriptor to its 5 nearest keypoint-vouched faces (a non-face lands far from every face?).

Then, per feature, the rule "reject on the issue's ear's side of it" with its limit halfway
between the ear and the nearest real face beyond, and what it costs: real faces rejected and
images ``detect_rate.py`` would no longer count (440 accepted today; the floor is 435); and the
combined rule "a fit only the fixed-point test accepted needs the mesh, HOG or the CNN to see a
face there".

Usage:
    OMP_NUM_THREADS=1 nice python benchmarks/nonface_evidence.py [--data ../shared/data]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from maskkit.face.blazeface import keypoint_angle
from maskkit.face.detect import get_detector, make_detector
from maskkit.face.fit_check import _eyes, eye_angle
from maskkit.face.landmarks import turned_patch
from maskkit.face.mesh import face_mesh
from maskkit.face.selection import find_faces
from _images import readable_images

REPO = Path(__file__).resolve().parents[1]

#: Accepted BlazeFace detections on real-masked that are not faces (viewed 4x enlarged), as
#: ``(file, (x0, y0, x1, y1))``: an accepted face whose box centre lies inside is that non-face.
NON_FACES = (
    ("0002/0014.jpg", (8, 42, 38, 70), "ear with a glasses arm (the issue's)"),
    ("0002/0002.jpg", (63, 53, 82, 72), "ear with a mask loop"),
    ("0002/0076.jpg", (63, 120, 102, 159), "floral fabric"),
    ("0002/0017.jpg", (130, 76, 146, 92), "between a mask and the head below it"),
    ("0002/0093.jpg", (129, 76, 146, 93), "the same crowd, same spot"),
    ("0002/0041.jpg", (60, 32, 80, 52), "a cap band above the face"),
)
RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173)  # image-left
LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398)


def _level(angle: float) -> np.ndarray:
    r = np.radians(angle)
    return np.array([[np.cos(r), np.sin(r)], [-np.sin(r), np.cos(r)]])


def keypoint_features(lm: np.ndarray, kp: np.ndarray) -> dict:
    e, kp = _eyes(lm), np.asarray(kp, np.float64)
    kiod = float(np.linalg.norm(kp[1] - kp[0]))
    q = (kp - kp[:2].mean(0)) @ _level(keypoint_angle(kp)).T / kiod
    return {"kp_eye": float(np.linalg.norm(e - kp[:2], axis=1).max() / kiod), "nose_y": float(q[2, 1]),
            "ear_l_x": float(q[4, 0]), "ear_r_x": float(q[5, 0])}


def mesh_features(mesh, rgb, lm, box) -> dict:
    e = _eyes(lm)
    iod, ang = float(np.linalg.norm(e[1] - e[0])), eye_angle(lm)
    side = ((box[2] - box[0]) + (box[3] - box[1])) / 2
    pts, _ = mesh.look(rgb, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), 1.4 * side, ang)
    q = pts.astype(np.float64) @ _level(ang).T
    pts, presence = mesh.look(rgb, (q.min(0) + q.max(0)) / 2 @ _level(ang), 1.5 * float((q.max(0) - q.min(0)).max()), ang)
    pts = pts.astype(np.float64)
    me = np.stack([pts[list(RIGHT_EYE)].mean(0), pts[list(LEFT_EYE)].mean(0)])
    return {"mesh_presence": float(presence), "mesh_eye": float(np.linalg.norm(me - e, axis=1).max() / iod),
            "mesh_nose": float(np.linalg.norm(pts[1] - lm[30]) / iod)}


def context_look(det, rgb, lm, box, frac: float, size: int = 256) -> tuple[float, float]:
    import cv2

    e = _eyes(lm)
    iod = float(np.linalg.norm(e[1] - e[0]))
    side = ((box[2] - box[0]) + (box[3] - box[1])) / 2
    patch, m = turned_patch(rgb, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), eye_angle(lm), frac * size / side, size)
    expect, best = frac * size, None
    for model in (det._short, det._full):
        for b, sc, kp in model(patch, 0.1):
            near = np.linalg.norm((b[:2] + b[2:]) / 2 - size / 2) <= 0.6 * expect
            if near and 0.5 * expect <= ((b[2] - b[0]) + (b[3] - b[1])) / 2 <= 2 * expect and (best is None or sc > best[1]):
                best = (b, sc, kp)
    if best is None:
        return 0.0, float("inf")
    inv = cv2.invertAffineTransform(m)
    kp = np.asarray(best[2], np.float64) @ inv[:, :2].T + inv[:, 2]
    return float(best[1]), float(np.linalg.norm(kp[:2] - e, axis=1).max() / iod)


def symmetry(rgb, lm, size: int = 64) -> float:
    import cv2

    g = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    e = _eyes(lm)
    c, iod = e.mean(0), float(np.linalg.norm(e[1] - e[0]))
    m = cv2.getRotationMatrix2D((float(c[0]), float(c[1])), eye_angle(lm), size / (3.0 * iod))
    m[0, 2] += size / 2 - c[0]
    m[1, 2] += size / 4 - c[1]
    p = cv2.warpAffine(g, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[: size * 3 // 4]
    a, b = p[:, : size // 2], p[:, size // 2:][:, ::-1]
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum() + 1e-6))


def _unit(lm):
    x = np.asarray(lm, np.float64) - np.mean(lm, axis=0)
    return x / np.linalg.norm(x)


def _procrustes(x, ref):
    u, s, vt = np.linalg.svd(ref.T @ x)
    return x @ (u @ vt).T * s.sum()


def dlib_features(hog, cnn, rec, rgb, lm) -> dict:
    """HOG / CNN looks at the upright copy, and the face descriptor (kept for the kNN distance)."""
    import dlib

    ang = eye_angle(lm)
    (x0, y0), (x1, y1) = lm.min(0), lm.max(0)
    box = (float(x0), float(y0), float(x1), float(y1))
    hs, cs = hog.second_look_score(rgb, box, ang), cnn.upright_score(rgb, box, ang)
    rect = dlib.rectangle(int(x0), int(y0), int(x1), int(y1))
    shape = dlib.full_object_detection(rect, [dlib.point(int(round(x)), int(round(y))) for x, y in lm])
    desc = np.array(rec.compute_face_descriptor(np.ascontiguousarray(rgb), shape, 0, 0.25))
    return {"hog_upright": -1.0 if hs is None else float(hs), "cnn_upright": 0.0 if cs is None else float(cs),
            "desc": desc}


def rules(rows, feats) -> None:
    """Per feature, the single-limit rule that rejects the issue's ear, and its cost."""
    real = [r for r in rows if r["label"] is None]
    ear = next(r for r in rows if r["label"] and "the issue's" in r["label"])
    n_img = len({r["rel"] for r in real})
    print(f"\nrules that reject the issue's ear (limit halfway to the nearest real face beyond it); "
          f"images with an accepted real face: {n_img} (floor 435)")
    print(f"{'feature':<15}{'ear':>8}{'limit':>8}{'real rejected':>15}{'images lost':>13}{'non-faces rejected':>20}")

    def cost(reject):
        gone = {id(r) for r in real if reject(r)}
        lost = {r["rel"] for r in real} - {r["rel"] for r in real if id(r) not in gone}
        return len(gone), len(lost)

    for k in feats:
        v = np.array([r[k] for r in real], float)
        low = ear[k] < np.median(v)
        beyond = v[v > ear[k]] if low else v[v < ear[k]]
        lim = (ear[k] + (beyond.min() if low else beyond.max())) / 2 if beyond.size else ear[k]

        def rejected(r, k=k, low=low, lim=lim):
            return r[k] <= lim if low else r[k] >= lim
        n, lost = cost(rejected)
        nf = sum(rejected(r) for r in rows if r["label"])
        print(f"{k:<15}{ear[k]:>8.3f}{lim:>8.3f}{n:>15}{lost:>13}{nf:>14} of {sum(1 for r in rows if r['label'])}")

    def unconfirmed(r):
        return r["method"] == "fixed_point" and r["mesh_presence"] < 0.5 and r["hog_upright"] < 0 and r["cnn_upright"] <= 0
    n, lost = cost(unconfirmed)
    print(f"{'fixed-point fit, no mesh / HOG / CNN face':<42} real rejected {n}, images lost {lost}, non-faces "
          f"rejected {sum(unconfirmed(r) for r in rows if r['label'])} of {sum(1 for r in rows if r['label'])}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = ap.parse_args()
    root = args.data / "real-masked"
    if not root.is_dir():
        raise SystemExit(f"{root} not found (pass --data)")
    import dlib

    from maskkit.face.models import model_file

    det, mesh = make_detector("blazeface"), face_mesh()
    hog, cnn = get_detector("hog", upsample=0, max_side=0), get_detector("cnn", upsample=0, max_side=0)
    rec = dlib.face_recognition_model_v1(str(model_file("dlib_face_recognition_resnet_model_v1.dat")))
    rows = []
    for rel, rgb in readable_images(root):
        for f in find_faces(det, rgb, "all"):
            if not f.fit.ok:
                continue
            lm = np.asarray(f.landmarks68, np.float64)
            c = ((f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2)
            label = next((why for name, b, why in NON_FACES
                          if name == rel and b[0] <= c[0] <= b[2] and b[1] <= c[1] <= b[3]), None)
            r = {"rel": rel, "label": label, "method": f.fit.method, "lm": lm, "side": f.box[2] - f.box[0]}
            r.update(keypoint_features(lm, f.keypoints))
            r.update(mesh_features(mesh, rgb, lm, f.box))
            r["ctx3_score"], r["ctx3_eye"] = context_look(det, rgb, lm, f.box, 1 / 3)
            r["ctx4_score"], _ = context_look(det, rgb, lm, f.box, 1 / 4)
            r["symmetry"] = symmetry(rgb, lm)
            r["kp_iod_box"] = float(np.linalg.norm(np.subtract(f.keypoints[1], f.keypoints[0])) / r["side"])
            r.update(dlib_features(hog, cnn, rec, rgb, lm))
            rows.append(r)
    vouched = [_unit(r["lm"]) for r in rows if r["method"] == "keypoints"]
    mean = vouched[0]
    for _ in range(5):
        mean = _unit(np.mean([_procrustes(x, mean) for x in vouched], axis=0))
    for r in rows:
        r["shape"] = float(np.linalg.norm(_procrustes(_unit(r["lm"]), mean) - mean))
    vouched_desc = np.array([r["desc"] for r in rows if r["method"] == "keypoints"])
    for r in rows:
        d = np.linalg.norm(vouched_desc - r["desc"], axis=1)
        r["descriptor_knn"] = float(np.sort(d[d > 1e-9])[:5].mean())
    real = [r for r in rows if r["label"] is None]
    bad = [r for r in rows if r["label"] is not None]
    print(f"real-masked, BlazeFace --faces all: {len(rows)} accepted faces in {len({r['rel'] for r in rows})} images; "
          f"{len(bad)} hand-labelled non-faces")
    feats = ["side", "kp_eye", "nose_y", "ear_l_x", "ear_r_x", "mesh_presence", "mesh_eye", "mesh_nose",
             "ctx3_score", "ctx4_score", "ctx3_eye", "symmetry", "shape", "kp_iod_box", "hog_upright",
             "cnn_upright", "descriptor_knn"]
    print(f"\n{'feature':<14}" + "".join(f"{h:>8}" for h in ("min", "p1", "p5", "p50", "p95", "p99", "max"))
          + "   non-faces (real faces on the non-face side of each, of " + f"{len(real)})")
    for k in feats:
        v = np.array([r[k] for r in real], float)
        med = float(np.median(v))
        cells = []
        for r in bad:
            side = (v <= r[k]) if r[k] < med else (v >= r[k])
            cells.append(f"{r[k]:.2f}({int(side.sum())})")
        print(f"{k:<14}" + "".join(f"{x:>8.2f}" for x in np.percentile(v, [0, 1, 5, 50, 95, 99, 100])) + "   " + " ".join(cells))
    print("\nnon-faces: " + "; ".join(f"{r['rel']} {r['label']} ({r['side']:.0f} px, {r['method']})" for r in bad))
    rules(rows, feats)


if __name__ == "__main__":
    main()
