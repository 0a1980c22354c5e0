"""The committed mask templates: reproducible from the generator, anchors inside the alpha,
drawn neutral (colour comes at render time), soft anti-aliased edges."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskkit.render import N_BOUNDARY, N_INTERIOR, STYLES, templates_dir

MASKS = templates_dir()


def _templates():
    out = []
    for jp in sorted(MASKS.glob("*.json")):
        meta = json.loads(jp.read_text())
        if meta.get("format") == "maskkit-mask-template":
            out.append(meta)
    return out


TEMPLATES = _templates()


def test_every_style_has_templates_and_cloth_has_patterns():
    styles = {m["style"] for m in TEMPLATES}
    assert styles == set(STYLES)
    textures = {m["texture"] for m in TEMPLATES if m["style"] == "cloth"}
    assert {"checks", "stripes", "dots", "noise"} <= textures
    variants = {m["variant"] for m in TEMPLATES if m["style"] == "n95"}
    assert any("valve" in v for v in variants) and any("valve" not in v for v in variants)


def test_generator_reproduces_committed_files_byte_for_byte(tmp_path):
    from maskkit.masks.generate import generate

    written = generate(tmp_path)
    assert written, "generator wrote nothing"
    names = sorted(p.name for p in written)
    committed = sorted(p.name for p in MASKS.iterdir() if p.suffix in (".png", ".json"))
    assert names == committed, "committed template files differ from what the generator writes"
    diffs = []
    for p in written:
        a, b = p.read_bytes(), (MASKS / p.name).read_bytes()
        if a != b:
            why = ""
            if p.suffix == ".png":
                pa, pb = np.asarray(Image.open(p), np.int16), np.asarray(Image.open(MASKS / p.name), np.int16)
                why = f" (max pixel difference {np.abs(pa - pb).max() if pa.shape == pb.shape else 'shape'};" \
                      f" numpy/OpenCV/Pillow versions differ from the ones that wrote the committed files?)"
            diffs.append(p.name + why)
    assert not diffs, f"regenerated templates differ from the committed ones: {diffs}"


@pytest.mark.parametrize("meta", TEMPLATES, ids=[m["name"] for m in TEMPLATES])
def test_anchors_lie_inside_alpha_and_triangulation_is_valid(meta):
    rgba = np.asarray(Image.open(MASKS / meta["image"]))
    assert rgba.shape[2] == 4 and list(rgba.shape[1::-1]) == meta["size"]
    alpha = rgba[..., 3].astype(np.float32) / 255.0
    anc = np.asarray(meta["anchors"], np.float64)
    roles = meta["anchor_roles"]
    assert len(anc) == len(roles) == 2 * N_BOUNDARY + N_INTERIOR
    h, w = alpha.shape
    for i, (pt, role) in enumerate(zip(anc, roles)):
        x, y = int(round(pt[0])), int(round(pt[1]))
        assert 0 <= x < w and 0 <= y < h, f"anchor {i} outside the template canvas"
        if role in ("boundary", "interior"):
            assert alpha[y, x] >= 0.5, f"{role} anchor {i} at {pt} has alpha {alpha[y, x]:.2f}"
    # ring anchors lie outside the mask body (they carry the edge, loops and cartridges)
    ring = [i for i, r in enumerate(roles) if r == "ring"]
    body_inside = sum(alpha[int(round(anc[i, 1])), int(round(anc[i, 0]))] >= 0.5 for i in ring)
    assert body_inside <= len(ring) // 4
    tri = np.asarray(meta["triangles"])
    a, b, c = anc[tri[:, 0]], anc[tri[:, 1]], anc[tri[:, 2]]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    assert np.all(np.abs(area) > 1.0), "degenerate triangle in the fixed triangulation"
    assert len(meta["covered"]) == len(tri) and any(meta["covered"])
    assert tri.max() < len(anc) and len(tri) < 255


@pytest.mark.parametrize("meta", TEMPLATES, ids=[m["name"] for m in TEMPLATES])
def test_templates_are_neutral_with_soft_edges(meta):
    rgba = np.asarray(Image.open(MASKS / meta["image"])).astype(np.float32)
    tint = np.asarray(Image.open(MASKS / meta["tint"])).astype(np.float32) / 255.0
    a = rgba[..., 3] / 255.0
    body = (a > 0.9) & (tint > 0.9)
    assert body.sum() > 0.1 * a.size * 0.5
    rgb = rgba[..., :3][body]
    # no default tint: the colourable body is drawn grey/white, channels equal within 2 levels
    assert np.abs(rgb[:, 0] - rgb[:, 2]).mean() < 2.0 and np.abs(rgb[:, 0] - rgb[:, 1]).mean() < 2.0
    assert rgb.mean() > 120, "body drawn too dark to take a light colour"
    # soft anti-aliased alpha: the mask's edge is a ramp, not a hard threshold
    edge = (a > 0.02) & (a < 0.98)
    solid = a >= 0.98
    import cv2

    contour_len = sum(cv2.arcLength(c, True) for c in cv2.findContours(
        solid.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0])
    assert edge.sum() >= 1.5 * contour_len, "alpha edge is (nearly) binary: white fringes ahead"
    # nothing outside the alpha carries colour (keeps the PNG clean and premultiplication exact)
    assert np.all(rgba[..., :3][a == 0] == 0)
