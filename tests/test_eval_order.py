"""A pair's figures never depend on where its line sits (issue 12 §8, "pairs in any order"):
synthetic masks are drawn per image from its own name (a .bin: its index), the masked side of a
pair is its second image as written, and an image named in several pairs wears one mask.

Faces: scikit-image's astronaut and matplotlib's grace_hopper (aligned crops and photometric /
mirror variants). The stand-in model's embedding is a fixed random projection of the pixels, so
every mask pixel moves it: a mask drawn from the image's position would change the distances."""
from __future__ import annotations

import os

import numpy as np
import pytest

VARIANTS = {"orig": lambda f: f, "bright": lambda f: np.clip(f.astype(int) + 25, 0, 255).astype(np.uint8),
            "dark": lambda f: np.clip(f.astype(int) - 25, 0, 255).astype(np.uint8),
            "mirror": lambda f: np.ascontiguousarray(f[:, ::-1])}


class _PixelModel:
    """μ and σ are fixed random projections of the 16x16-downsampled image (σ > 0 and varying,
    so MLS is informative); a stand-in whose embedding every masked pixel changes."""

    config = {"method": "stand-in"}

    def __init__(self):
        rng = np.random.default_rng(0)
        self.w_mu = rng.normal(size=(16 * 16 * 3, 24))
        self.w_sig = rng.normal(size=(16 * 16 * 3, 24)) / 50

    def embed(self, images, masked):
        import cv2

        x = np.stack([cv2.resize(im, (16, 16), interpolation=cv2.INTER_AREA) for im in np.asarray(images)])
        x = x.reshape(len(x), -1).astype(np.float64) / 255.0 - 0.5
        return x @ self.w_mu, 0.05 + np.log1p(np.exp(x @ self.w_sig))


@pytest.fixture(scope="module")
def root(astronaut, grace_hopper, tmp_path_factory):
    """root/<identity>/<variant>.png: 4 aligned crops of each face (PNG: lossless)."""
    from PIL import Image

    from maskkit.training.eval.evalsets import FaceAligner

    root = tmp_path_factory.mktemp("faces")
    aligner = FaceAligner()
    for ident, photo in (("ast", astronaut), ("grace", grace_hopper)):
        face, _, _ = aligner(photo)
        (root / ident).mkdir()
        for v, f in VARIANTS.items():
            Image.fromarray(f(face)).save(root / ident / f"{v}.png")
    return root


def _lines() -> list[str]:
    """10 same pairs and 10 different pairs, interleaved S D S D ...; images recur across pairs."""
    vs = list(VARIANTS)
    same = [f"{i}/{a}.png {i}/{b}.png 1" for i in ("ast", "grace") for k, a in enumerate(vs) for b in vs[k + 1:]][:10]
    diff = [f"ast/{a}.png grace/{b}.png 0" if (j + k) % 2 else f"grace/{b}.png ast/{a}.png 0"
            for j, a in enumerate(vs) for k, b in enumerate(vs)][:10]
    return [x for pair in zip(same, diff) for x in pair]


def _evaluate(tmp_path, root, lines, side, name):
    from maskkit.render import MaskRenderer
    from maskkit.training.eval.evalsets import FaceAligner, load_pairs
    from maskkit.training.eval.report import EvalConfig, evaluate_pairset

    pf = tmp_path / f"{name}.txt"
    pf.write_text("\n".join(lines) + "\n")
    pairs = load_pairs(pf, root, FaceAligner(), progress=False)
    cfg = EvalConfig(model=str(tmp_path), pairs=str(pf), root=str(root), mask_side=side, seed=5, progress=False,
                     save_to_run=False)
    run = evaluate_pairset(_PixelModel(), pairs, cfg, renderer=MaskRenderer())
    by_line = {lines[p]: (run.dist[k], run.mls[k]) for k, p in enumerate(run.pairs.pair_index)}
    return run, by_line


@pytest.mark.parametrize("side", ["one", "both"])
def test_reordered_pairs_file_gives_the_same_distance_per_pair(root, tmp_path, side):
    """The same pairs file interleaved, same-identity lines first, reversed and shuffled: every
    pair keeps its distance and MLS, so the all-pairs AUC is the same; the three orders whose
    folds hold the same pairs (the stratified folds of the sorted file are the interleaved
    file's blocks) give the same accuracy too. Before the fix a mask was drawn from the image's
    position: 54.17 % / AUC 0.48 sorted vs 51.67 % / 0.55 interleaved on a tester's file,
    115 of 117 pairs at another distance."""
    lines = _lines()
    srt = sorted(lines, key=lambda x: not x.endswith(" 1"))  # same pairs first, each class in file order
    orders = {"interleaved": lines, "same_first": srt, "reversed": lines[::-1],
              "shuffled": [lines[i] for i in np.random.default_rng(3).permutation(len(lines))]}
    runs = {k: _evaluate(tmp_path, root, v, side, k) for k, v in orders.items()}
    ref_run, ref = runs["interleaved"]
    assert ref_run.metrics["counts"]["masked"] == (20 if side == "one" else 40)
    assert ref_run.metrics["counts"]["pairs"] == 20
    assert runs["same_first"][0].metrics["protocol"]["fold_rule"] == "stratified"
    for name, (run, got) in runs.items():
        assert got.keys() == ref.keys(), name
        # the same masked pixels and the same model: equal up to the BLAS summation order of a
        # batch of another size (1e-12 on squared L2 distances in [0, 4]; MLS relative to its size)
        for line, (d, mls) in ref.items():
            assert got[line][0] == pytest.approx(d, abs=1e-12), (name, line)
            assert got[line][1] == pytest.approx(mls, rel=1e-12), (name, line)
        for score in ("cosine", "mls"):
            assert run.metrics[score]["auc"] == pytest.approx(ref_run.metrics[score]["auc"], abs=1e-12), (name, score)
            if name != "shuffled":  # same pairs in each fold (shuffled: other folds, by design)
                assert run.metrics[score]["accuracy"] == pytest.approx(ref_run.metrics[score]["accuracy"],
                                                                       abs=1e-12), (name, score)
        # an image named in several pairs wears one mask in all of them
        for nm in set(run.pairs.names):
            at = [i for i, n in enumerate(run.pairs.names) if n == nm and run.emb.masked[i]]
            assert all(np.array_equal(run.images[at[0]], run.images[i]) for i in at[1:]), (name, nm)
    # the masked side is the second image of each pair as written, whatever the line's position
    run = runs["shuffled"][0]
    assert run.emb.masked.tolist() == ([False, True] * 20 if side == "one" else [True] * 40)


def test_mask_keys_are_names_and_bin_indices(root, tmp_path):
    """A pairs file keys each image by its exact file name (however the line spells it); a
    .bin by its index in the file; the same key draws the same mask in any position."""
    from maskkit.render import MaskRenderer
    from maskkit.training.eval.evalsets import FaceAligner, apply_masks, load_bin, load_pairs, write_bin

    pf = tmp_path / "p.txt"
    pf.write_text("ast/orig ast/bright.png 1\ngrace/dark.png ast/orig.png 0\n")  # extension-less name too
    ps = load_pairs(pf, root, FaceAligner(), progress=False)
    assert ps.mask_keys == ["ast/orig.png", "ast/bright.png", "grace/dark.png", "ast/orig.png"]
    mo = apply_masks(ps.images, np.ones(4, bool), 1, landmarks68=ps.landmarks68, renderer=MaskRenderer(),
                     progress=False, keys=ps.mask_keys)
    assert mo.n_masked == 4 and np.array_equal(mo.images[0], mo.images[3])
    assert not np.array_equal(mo.images[0], mo.images[1])
    # reversed positions, same keys: the same masks
    rev = apply_masks(ps.images[::-1], np.ones(4, bool), 1, landmarks68=ps.landmarks68[::-1],
                      renderer=MaskRenderer(), progress=False, keys=ps.mask_keys[::-1])
    assert np.array_equal(rev.images, mo.images[::-1]) and rev.styles == mo.styles[::-1]
    bp = write_bin(tmp_path / "p.bin", ps.images, ps.issame, ext=".png")
    assert load_bin(bp).mask_keys == [0, 1, 2, 3]


def test_identification_masks_are_keyed_by_path(root, tmp_path):
    """A probe keeps its mask when another probe file sorts before it (before the fix the masks
    followed the probes' positions, so adding a file re-drew every later probe's mask)."""
    from maskkit.render import MaskRenderer
    from maskkit.training.eval.evalsets import FaceAligner, load_image_folder
    from maskkit.training.eval.report import EvalConfig, evaluate_identification

    for d, files in (("gallery", ["ast/orig", "grace/orig"]), ("probes", ["ast/dark", "grace/mirror"])):
        for f in files:
            (tmp_path / d / f.split("/")[0]).mkdir(parents=True, exist_ok=True)
            os.symlink(root / f"{f}.png", tmp_path / d / f"{f}.png")
    cfg = EvalConfig(model=str(tmp_path), gallery=str(tmp_path / "gallery"), probes=str(tmp_path / "probes"),
                     mask_side="both", seed=2, progress=False, save_to_run=False)

    def probes_run():
        g = load_image_folder(tmp_path / "gallery", FaceAligner(), progress=False)
        p = load_image_folder(tmp_path / "probes", FaceAligner(), progress=False)
        return evaluate_identification(_PixelModel(), g, p, cfg, renderer=MaskRenderer())

    before = probes_run()
    os.symlink(root / "ast" / "bright.png", tmp_path / "probes" / "ast" / "a_first.png")  # sorts first
    after = probes_run()
    assert before.probes.paths == ["ast/dark.png", "grace/mirror.png"]
    assert after.probes.paths == ["ast/a_first.png", "ast/dark.png", "grace/mirror.png"]
    assert np.array_equal(after.probe_images[1:], before.probe_images)
    assert np.array_equal(after.gallery_images, before.gallery_images)
    assert after.probe_emb.masked.all() and after.gallery_emb.masked.all()
