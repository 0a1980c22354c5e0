"""Foreign weights in and out (issue 11): arcface_torch / MagFace layouts, forward equivalence,
round trips, --init with freezing and exact resume.

The reference key/shape lists are data written from the reference files
(:mod:`reference_layouts`); the reference forward below is written from arcface_torch's
documented layer order (``backbones/iresnet.py``, commit 04a433f154de):

* stem: conv3x3(stride 1) -> bn1 -> prelu;
* block: bn1 -> conv1 -> bn2 -> prelu -> conv2(stride) -> bn3, plus ``downsample`` (conv1x1(stride)
  -> BN) of the input when present, added;
* head: bn2 -> flatten -> dropout (identity in eval) -> fc -> features (BatchNorm1d).

It consumes the state_dict by key name and checks that it used every key (arcface_torch's
``load_state_dict(strict=True)`` in spirit), so a renamed, missing or extra key fails it.
"""
from __future__ import annotations

import hashlib
import json
import math

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reference_layouts import BLOCKS, PARAMS_R50, arcface_layout, magface_layout

from maskkit.training.api import InferenceModel, load_model
from maskkit.training.checkpoints import (WeightsError, apply_init_config, arcface_to_facemodel_key,
                                          arcface_torch_layout, facemodel_to_arcface_key, init_model,
                                          iresnet_to_arcface_key, read_weights, write_arcface_torch)
from maskkit.training.config import TrainConfig
from maskkit.training.model import build_model

NARROW = dict(backbone="r18", width=0.25, progress=False, tensorboard=False, shuffle_buffer=16)


# ------------------------------------------------------------------------------------------------
# helpers: scaled reference layouts, random weights, the reference forward
# ------------------------------------------------------------------------------------------------
def scaled_layout(depth: str, width: float = 1.0, emb: int = 512) -> list[tuple[str, tuple[int, ...]]]:
    """The reference layout with every channel count c in (64, 128, 256, 512) -> round(c * width)
    (kernel sizes and the 3 input channels untouched) and the embedding size ``emb``."""
    def ch(d: int) -> int:
        return int(round(d * width)) if d in (64, 128, 256, 512) else d

    out = []
    for k, s in arcface_layout(depth):
        if k == "fc.weight":
            s = (emb, ch(512) * 49)
        elif k == "fc.bias" or (k.startswith("features.") and s):
            s = (emb,)
        else:
            s = tuple(ch(d) for d in s)
        out.append((k, s))
    return out


def random_state(layout, seed: int, features_scale_one: bool = True) -> dict[str, torch.Tensor]:
    """Random weights with non-trivial BatchNorm statistics (He-scaled convs keep r18's activations
    in a normal range)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, s in layout:
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            sd[k] = 0.5 + torch.rand(s, generator=g)
        elif k.endswith("running_mean") or k.endswith(".bias"):
            sd[k] = 0.1 * torch.randn(s, generator=g)
        elif k.endswith("prelu.weight"):
            sd[k] = 0.25 * torch.rand(s, generator=g)
        elif len(s) == 1:  # BN scale
            sd[k] = 0.5 + torch.rand(s, generator=g)
        else:  # conv / fc weight
            fan_in = math.prod(s[1:])
            sd[k] = torch.randn(s, generator=g) * math.sqrt(1.0 / fan_in)
    if features_scale_one:
        sd["features.weight"] = torch.ones_like(sd["features.weight"])  # arcface_torch freezes it at 1
    return sd


def ref_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, depth: str = "r18", eps: float = 1e-5) -> torch.Tensor:
    """arcface_torch's IResNet forward (eval mode) from its documented layer order."""
    used: set[str] = set()

    def t(k: str) -> torch.Tensor:
        used.add(k)
        return sd[k]

    def bn(p: str, h: torch.Tensor) -> torch.Tensor:
        used.add(p + ".num_batches_tracked")
        return F.batch_norm(h, t(p + ".running_mean"), t(p + ".running_var"), t(p + ".weight"), t(p + ".bias"),
                            False, 0.0, eps)

    h = F.prelu(bn("bn1", F.conv2d(x, t("conv1.weight"), padding=1)), t("prelu.weight"))
    for s, n in enumerate(BLOCKS[depth], start=1):
        for b in range(n):
            p = f"layer{s}.{b}."
            stride = 2 if b == 0 else 1
            out = F.conv2d(bn(p + "bn1", h), t(p + "conv1.weight"), padding=1)
            out = F.prelu(bn(p + "bn2", out), t(p + "prelu.weight"))
            out = bn(p + "bn3", F.conv2d(out, t(p + "conv2.weight"), stride=stride, padding=1))
            identity = h
            if p + "downsample.0.weight" in sd:
                identity = bn(p + "downsample.1", F.conv2d(h, t(p + "downsample.0.weight"), stride=stride))
            h = out + identity
    h = torch.flatten(bn("bn2", h), 1)  # dropout: identity in eval mode
    h = bn("features", F.linear(h, t("fc.weight"), t("fc.bias")))
    assert used == set(sd), f"unused keys {sorted(set(sd) - used)[:4]}"
    return h


def arc_input(rgb_u8: np.ndarray) -> torch.Tensor:
    """arcface_torch inference.py: RGB, div(255).sub(0.5).div(0.5), NCHW."""
    return torch.from_numpy(rgb_u8).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)


def magface_input(rgb_u8: np.ndarray) -> torch.Tensor:
    """MagFace gen_feat.py: cv2.imread (BGR) -> ToTensor (/255) -> Normalize(mean 0, std 1)."""
    bgr = np.ascontiguousarray(rgb_u8[..., ::-1])
    return torch.from_numpy(bgr).permute(0, 3, 1, 2).float().div(255)


@pytest.fixture(scope="module")
def faces(astronaut, grace_hopper) -> np.ndarray:
    """Two real faces (dependency-shipped), cropped around the face and resized to 112x112."""
    crops = [astronaut[30:190, 170:330], grace_hopper[90:330, 160:400]]
    return np.stack([cv2.resize(np.ascontiguousarray(c), (112, 112), interpolation=cv2.INTER_AREA) for c in crops])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| relative to the outputs' scale (max |b|, at least 1): float32 rounding grows
    with the values, so the tolerance is relative."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    return float((a - b).abs().max() / max(1.0, float(b.abs().max())))


# ------------------------------------------------------------------------------------------------
# layouts as data
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", ["r18", "r34", "r50", "r100"])
def test_layout_matches_reference_and_maskkit_modules(depth):
    ref = arcface_layout(depth)
    assert list(arcface_torch_layout(depth).items()) == ref
    n_params = sum(math.prod(s) for k, s in ref if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    if depth == "r50":
        assert n_params == PARAMS_R50
    # maskkit's IResNet under the renaming has exactly the reference keys and shapes, in order
    from maskkit.training.iresnet import iresnet

    with torch.device("meta"):
        net = iresnet(depth)
        fm = build_model(TrainConfig(method="maskdul", backbone=depth, split_point="layer1.1"))
    assert [(iresnet_to_arcface_key(k), tuple(v.shape)) for k, v in net.state_dict().items()] == ref
    # FaceModel: the face branch + trunk + mu head are the layout; the masked branch repeats the
    # start block (stem, layer1.0, layer1.1); both directions of the key map agree
    shapes = dict(ref)
    parts = {"face": [], "masked": [], "sigma": []}
    for k, v in fm.state_dict().items():
        arc, part = facemodel_to_arcface_key(k, depth, 2)
        assert shapes[arc] == tuple(v.shape), k
        parts[part].append(arc)
        if part != "sigma":
            assert arcface_to_facemodel_key(arc, depth, 2, part) == k
    assert sorted(parts["face"]) == sorted(shapes)
    assert {a.split(".")[0] + "." + a.split(".")[1] for a in parts["masked"] if a.startswith("layer")} == \
        {"layer1.0", "layer1.1"}
    assert sorted(parts["sigma"]) == sorted(k for k in shapes if k.startswith(("bn2.", "fc.", "features.")))


@pytest.mark.parametrize("variant", ["module.", "dist"])
def test_magface_checkpoint_is_read_with_its_preprocessing_and_without_its_classifier(tmp_path, variant):
    entries = magface_layout("r18", variant, classes=10)
    sd = {k: torch.randn(s).half() if s else torch.tensor(3) for k, s in entries}
    path = tmp_path / "magface_epoch_00025.pth"
    torch.save({"epoch": 25, "arch": "iresnet18", "state_dict": sd,
                "optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}}, path)
    src = read_weights(path)
    assert src.layout == "magface" and src.label == "magface r18"
    assert list(src.backbone) == [k for k, _ in arcface_layout("r18")]
    assert all(v.dtype == torch.float32 for v in src.backbone.values() if v.is_floating_point())
    assert src.dropped == [entries[-1][0]]  # the MagLinear classifier, not the backbone's fc
    assert src.preprocess["input_color"] == "BGR" and src.preprocess["bn_eps"] == 2e-5
    assert src.preprocess["input_scale"] == pytest.approx(1 / 255)


def test_arcface_checkpoint_gpu_and_plain_state_dict(tmp_path):
    sd = random_state(scaled_layout("r34", 0.25, 128), seed=1)
    torch.save({"epoch": 3, "global_step": 99, "state_dict_backbone": sd, "state_dict_softmax_fc": {},
                "state_optimizer": {}, "state_lr_scheduler": {}}, tmp_path / "checkpoint_gpu_0.pt")
    torch.save(sd, tmp_path / "model.pt")
    for name in ("checkpoint_gpu_0.pt", "model.pt"):
        src = read_weights(tmp_path / name)
        assert (src.layout, src.arch.depth, src.arch.width, src.arch.embedding_size, src.arch.input_size) == \
            ("arcface_torch", "r34", 0.25, 128, 112)
        assert src.preprocess["input_color"] == "RGB" and src.preprocess["bn_eps"] == 1e-5


def test_bad_files_are_one_line_errors(tmp_path):
    sd = random_state(scaled_layout("r18", 0.25), seed=2)
    bad = dict(sd)
    del bad["layer2.0.bn1.running_var"]
    bad["layer2.0.extra.weight"] = torch.zeros(3)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(WeightsError) as e:
        read_weights(tmp_path / "bad.pth")
    msg = str(e.value)
    assert "\n" not in msg and "missing layer2.0.bn1.running_var" in msg and "unexpected layer2.0.extra.weight" in msg
    # objects weights_only refuses (here a pathlib.Path) -> one line, nothing unpickled
    from pathlib import Path

    torch.save({"conv1.weight": torch.zeros(1), "note": Path("x")}, tmp_path / "unsafe.pth")
    with pytest.raises(WeightsError, match=r"weights_only=True") as e:
        read_weights(tmp_path / "unsafe.pth")
    assert "\n" not in str(e.value)
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="cannot be read"):
        load_model(tmp_path / "junk.pth")
    # one damaged head tensor (fc.weight cut to 100 rows) is the one named, not the intact rest
    cut = dict(sd)
    cut["fc.weight"] = cut["fc.weight"][:100]
    torch.save(cut, tmp_path / "cut.pth")
    with pytest.raises(WeightsError) as e:
        read_weights(tmp_path / "cut.pth")
    msg = str(e.value)
    assert "fc.weight (100, " in msg and "fc.bias" not in msg and "features." not in msg, msg
    # a depth the file does not have
    torch.save(sd, tmp_path / "ok.pth")
    src = read_weights(tmp_path / "ok.pth")
    with pytest.raises(WeightsError, match="backbone 'r50'"):
        apply_init_config(TrainConfig(backbone="r50", width=0.25), src, explicit={"backbone"})


# ------------------------------------------------------------------------------------------------
# forward equivalence
# ------------------------------------------------------------------------------------------------
def test_forward_matches_reference_and_a_swap_of_bn2_bn3_breaks_it(tmp_path, faces):
    sd = random_state(scaled_layout("r18", 0.25), seed=3)
    torch.save(sd, tmp_path / "backbone.pth")
    m = load_model(tmp_path / "backbone.pth")
    assert m.meta["label"] == "backbone (arcface_torch r18 w0.25)" and not m.has_sigma
    x = np.concatenate([faces, np.random.default_rng(0).integers(0, 256, (1, 112, 112, 3), dtype=np.uint8)])
    mu, _ = m.embed(torch.from_numpy(x))
    with torch.no_grad():
        ref = ref_forward(sd, arc_input(x))
    assert _rel(mu, ref) < 1e-5, _rel(mu, ref)
    # a deliberate swap of two same-shape tensors (block layer1.1: bn2 <-> bn3) must show
    swapped = dict(sd)
    for k in ("weight", "bias", "running_mean", "running_var"):
        swapped[f"layer1.1.bn2.{k}"], swapped[f"layer1.1.bn3.{k}"] = sd[f"layer1.1.bn3.{k}"], sd[f"layer1.1.bn2.{k}"]
    torch.save(swapped, tmp_path / "swapped.pth")
    mu_s, _ = load_model(tmp_path / "swapped.pth").embed(torch.from_numpy(x))
    assert _rel(mu_s, ref) > 1e-2, _rel(mu_s, ref)


def test_magface_file_embeds_bgr_unit_range_input_with_bn_eps_2e5(tmp_path, faces):
    layout = [("module.features." + k, s) for k, s in scaled_layout("r18", 0.25)]
    sd = random_state([(k[len("module.features."):], s) for k, s in layout], seed=4, features_scale_one=False)
    # a tiny running variance where eps 2e-5 vs 1e-5 changes the output by ~20 %
    sd["features.running_var"] = torch.full_like(sd["features.running_var"], 1e-5)
    half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
    torch.save({"epoch": 1, "arch": "iresnet18",
                "state_dict": {"module.features." + k: v for k, v in half.items()} | {"module.fc.weight": torch.randn(512, 4)}},
               tmp_path / "magface.pth")
    m = load_model(tmp_path / "magface.pth")
    assert m.meta["layout"] == "magface r18 w0.25"
    mu, _ = m.embed(faces)  # RGB in, as every maskkit input
    sd32 = {k: v.float() if v.is_floating_point() else v for k, v in half.items()}  # the fp16 values, in fp32
    with torch.no_grad():
        ref = ref_forward(sd32, magface_input(faces), eps=2e-5)
        wrong_pre = ref_forward(sd32, arc_input(faces), eps=2e-5)
        wrong_eps = ref_forward(sd32, magface_input(faces), eps=1e-5)
    assert _rel(mu, ref) < 1e-5, _rel(mu, ref)
    assert _rel(wrong_pre, ref) > 1e-2 and _rel(wrong_eps, ref) > 1e-2  # both settings matter here


# ------------------------------------------------------------------------------------------------
# round trips
# ------------------------------------------------------------------------------------------------
def _with_stats(model, faces: np.ndarray, masked: np.ndarray):
    """Give a random model non-trivial BN statistics and distinct branches (one train-mode pass)."""
    from maskkit.training.api import normalize

    with torch.no_grad():
        if model.two_stream:
            for p in model.branch_masked.parameters():
                p.add_(0.05 * torch.randn_like(p))
        for mod in model.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.reset_running_stats()
                mod.momentum = None
        model.train()
        model(normalize(torch.from_numpy(faces)), torch.from_numpy(masked))
    return model.eval()


def test_export_arcface_torch_then_load_gives_identical_mu(tmp_path, faces):
    torch.manual_seed(0)
    cfg = TrainConfig(method="maskdul", backbone="r18", width=0.25, embedding_size=128, dropout=0.0)
    x = np.concatenate([faces, faces[:, :, ::-1]])
    model = _with_stats(build_model(cfg), x, np.array([False, True, True, False]))
    im = InferenceModel(model, cfg.to_dict())
    for branch, flags in (("face", np.zeros(4, bool)), ("masked", np.ones(4, bool))):
        path, notes = write_arcface_torch(im, tmp_path / f"{branch}.pth", branch=branch)
        sd = torch.load(path, weights_only=True)
        assert [(k, tuple(v.shape)) for k, v in sd.items()] == scaled_layout("r18", 0.25, 128)
        assert all(v.dtype == torch.float32 for v in sd.values() if v.is_floating_point())
        assert any("sigma head dropped" in n for n in notes) and any("width 0.25" in n for n in notes)
        loaded = load_model(path)
        # float NCHW input (contiguous): the same convolutions run in both models -> bit-identical mu
        xf = torch.from_numpy(x).permute(0, 3, 1, 2).float().contiguous()
        mu_file, sigma = loaded.embed(xf)
        mu_run, _ = im.embed(xf, torch.from_numpy(flags))
        assert sigma is None and torch.equal(mu_file, mu_run), branch
        # uint8 NHWC input reaches the convolutions channels_last-strided; the two-stream route's
        # concatenation returns NCHW, so the run's trunk convolutions use another kernel: float
        # rounding only (relative to the output scale)
        assert _rel(loaded.embed(x)[0], im.embed(x, flags)[0]) < 1e-5
    with pytest.raises(WeightsError, match="single-stream"):
        write_arcface_torch(InferenceModel(build_model(cfg.replace(method="arcface")), {}), tmp_path / "x.pth",
                            branch="masked")


def test_export_at_width_1_is_arcface_torchs_strict_layout_and_mu(tmp_path, faces):
    torch.manual_seed(1)
    cfg = TrainConfig(method="dul", backbone="r18", embedding_size=512, dropout=0.0)
    # BN statistics from 8 views (with 2 the final BN1d would divide by a 2-sample std and
    # magnify float rounding a hundredfold)
    views = np.concatenate([np.roll(np.concatenate([faces, faces[:, :, ::-1]]), s, axis=2) for s in (0, 5)])
    model = _with_stats(build_model(cfg), views, np.zeros(len(views), bool))
    path, notes = write_arcface_torch(InferenceModel(model, cfg.to_dict()), tmp_path / "backbone.pth")
    assert not any("width" in n for n in notes)
    sd = torch.load(path, weights_only=True)
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == arcface_layout("r18")  # strict: same keys, same shapes
    mu, _ = InferenceModel(model, cfg.to_dict()).embed(faces)
    with torch.no_grad():
        ref = ref_forward(sd, arc_input(faces))
    # width 1: fc sums 25088 products and the two sides run different conv kernels (NCHW vs
    # channels_last-strided input), so fp32 rounding reaches ~sqrt(25088) x 1.2e-7 = 2e-5
    assert _rel(ref, mu) < 1e-4, _rel(ref, mu)


@pytest.mark.parametrize("kind", ["arcface_torch", "magface"])
def test_init_gives_the_source_mu_at_step_0_in_both_branches(tmp_path, faces, kind):
    sd = random_state(scaled_layout("r18", 0.25), seed=5, features_scale_one=kind == "arcface_torch")
    if kind == "magface":
        torch.save({"state_dict": {"features.module." + k: v for k, v in sd.items()}}, tmp_path / "w.pth")
        with torch.no_grad():
            ref = ref_forward(sd, magface_input(faces), eps=2e-5)
    else:
        torch.save(sd, tmp_path / "w.pth")
        with torch.no_grad():
            ref = ref_forward(sd, arc_input(faces))
    src = read_weights(tmp_path / "w.pth")
    cfg = apply_init_config(TrainConfig(method="maskdul", init=str(tmp_path / "w.pth"), dropout=0.4), src)
    assert (cfg.backbone, cfg.width, cfg.input_color) == ("r18", 0.25, "BGR" if kind == "magface" else "RGB")
    model = build_model(cfg)
    report = init_model(model, cfg, src)
    assert report.fresh and all(k.startswith("logvar_head.") for k in report.fresh)
    assert report.sha256 == hashlib.sha256((tmp_path / "w.pth").read_bytes()).hexdigest()
    im = InferenceModel(model, cfg.to_dict())
    for flags in (np.zeros(2, bool), np.ones(2, bool)):  # both start blocks are the pretrained one
        mu, sigma = im.embed(faces, flags)
        assert sigma is not None and _rel(mu, ref) < 1e-5, _rel(mu, ref)


def test_init_from_a_maskkit_run_keeps_both_branches_and_its_sigma_head(tmp_path, faces):
    torch.manual_seed(3)
    src_cfg = TrainConfig(method="maskdul", backbone="r18", width=0.25, embedding_size=64, dropout=0.0,
                          split_point="layer1.0")
    x = np.concatenate([faces, faces[:, :, ::-1]])
    src_model = _with_stats(build_model(src_cfg), x, np.array([False, True, False, True]))
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(src_cfg.to_json())
    torch.save({"config": src_cfg.to_dict(), "model": src_model.state_dict(), "step": 9}, run / "checkpoints" / "last.pt")
    src = read_weights(run)
    assert src.layout == "maskkit" and src.sigma is not None and src.label == "maskkit maskdul r18 w0.25 d64"
    # a target with a longer start block: its extra masked unit comes from the source's trunk
    cfg = apply_init_config(TrainConfig(method="maskdul", init=str(run), split_point="layer1.1", dropout=0.0), src)
    model = build_model(cfg)
    report = init_model(model, cfg, src)
    assert report.fresh == [] and report.sigma_head
    xf = torch.from_numpy(x).permute(0, 3, 1, 2).float().contiguous()
    a, b = InferenceModel(model, cfg.to_dict()), InferenceModel(src_model, src_cfg.to_dict())
    for flags in (torch.zeros(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool)):
        mu_a, sig_a = a.embed(xf, flags)
        mu_b, sig_b = b.embed(xf, flags)
        assert torch.equal(mu_a, mu_b) and torch.equal(sig_a, sig_b)


def test_fresh_sigma_head_starts_at_the_documented_norm():
    # model.py: in train mode ||sigma|| ~ sqrt(D) e^{1/4} = 29.05 for D = 512
    torch.manual_seed(0)
    model = build_model(TrainConfig(method="dul", backbone="r18", width=0.25, embedding_size=512)).train()
    with torch.no_grad():
        _, logvar = model.encode(torch.randn(32, 3, 112, 112))
    norm = torch.exp(0.5 * logvar).norm(dim=1).mean().item()
    assert abs(norm - math.sqrt(512) * math.exp(0.25)) < 0.05 * 29.05, norm


# ------------------------------------------------------------------------------------------------
# training from --init: freezing, exact resume across the unfreeze step, the record
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_shards(tmp_path_factory, astronaut, grace_hopper):
    """Two identities of jittered real-face crops (dependency-shipped faces), every other one
    flagged masked."""
    from maskkit.training.data import write_shards

    rng = np.random.default_rng(0)
    samples = []
    for li, (img, (y0, x0, y1, x1)) in enumerate(((astronaut, (30, 170, 190, 330)),
                                                  (grace_hopper, (90, 160, 330, 400)))):
        for j in range(6):
            dy, dx = rng.integers(-8, 9, 2)
            crop = np.ascontiguousarray(img[max(0, y0 + dy):y1 + dy, max(0, x0 + dx):x1 + dx])
            samples.append({"key": f"s{li}{j}", "image": cv2.resize(crop, (112, 112), interpolation=cv2.INTER_AREA),
                            "label": li, "masked": j % 2 == 1, "style": "surgical"})
    out = tmp_path_factory.mktemp("ck_shards")
    write_shards(out, samples, ["astronaut", "grace_hopper"], shard_samples=6)
    return out


def _ck(run) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=False)


def test_init_freeze_then_resume_across_the_unfreeze_step_is_exact(tmp_path, small_shards):
    from maskkit.training.engine import train

    sd = random_state(scaled_layout("r18", 0.25, 128), seed=6)
    wpath = tmp_path / "backbone.pth"
    torch.save(sd, wpath)
    src = read_weights(wpath)
    base = apply_init_config(TrainConfig(data=str(small_shards), method="maskdul", batch_size=4, num_workers=1,
                                         steps_per_epoch=3, log_every=1, ckpt_every=100, seed=1, lr=0.05,
                                         init=str(wpath), freeze_steps=2, finetune_lr_mult=0.1, **NARROW), src)
    train(base.replace(out=str(tmp_path / "a"), max_steps=4))
    train(base.replace(out=str(tmp_path / "b"), max_steps=1))
    train(base.replace(out=str(tmp_path / "b"), max_steps=4), resume=True)
    train(base.replace(out=str(tmp_path / "c"), max_steps=2))
    a, b, c = _ck(tmp_path / "a"), _ck(tmp_path / "b"), _ck(tmp_path / "c")
    for part in ("model", "criterion"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
    for k, v in a["optimizer"]["state"].items():
        assert torch.equal(v["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])
    # frozen for exactly 2 steps: weights and BN statistics of every pretrained tensor unchanged
    depth, k_split = "r18", len(build_model(base).branch_names) - 1
    for key, v in c["model"].items():
        arc, part = facemodel_to_arcface_key(key, depth, k_split)
        if part == "sigma":
            continue
        assert torch.equal(v, sd[arc]), f"{key} moved while frozen"  # BN running statistics included
    moved = [key for key, v in a["model"].items() if key.startswith("trunk.") and key.endswith("conv1.weight")
             and not torch.equal(v, c["model"][key])]
    assert moved, "the pretrained weights never trained after the unfreeze step"
    assert not torch.equal(c["model"]["logvar_head.fc.weight"], a["model"]["logvar_head.fc.weight"])
    # the record: config.json names the file, its sha256 and layout; the checkpoint carries it too
    stored = json.loads((tmp_path / "a" / "config.json").read_text())
    assert stored["init"] == str(wpath) and stored["init_layout"] == "arcface_torch r18 w0.25 d128"
    assert stored["init_sha256"] == hashlib.sha256(wpath.read_bytes()).hexdigest()
    assert a["config"]["init_sha256"] == stored["init_sha256"] and stored["freeze_steps"] == 2
    groups = a["optimizer"]["param_groups"]
    assert [g["name"] for g in groups] == ["pretrained", "new"] and groups[0]["lr"] == pytest.approx(0.1 * groups[1]["lr"])
    assert groups[0]["weight_decay"] == groups[1]["weight_decay"] == base.weight_decay > 0
    # the last step of c was frozen: lr 0 and weight decay 0 for the pretrained group only (with
    # lr 0 a weight decay would not move the weights but would enter the momentum buffer)
    frozen = c["optimizer"]["param_groups"]
    assert (frozen[0]["lr"], frozen[0]["weight_decay"]) == (0.0, 0.0) and frozen[1]["lr"] > 0
    assert frozen[1]["weight_decay"] == base.weight_decay


def test_old_config_without_the_new_keys_still_loads(tmp_path, faces):
    from maskkit.training.api import Preprocess

    cfg = TrainConfig(method="arcface", backbone="r18", width=0.25, embedding_size=64)
    old = cfg.to_dict()
    for k in ("input_color", "input_scale", "input_mean", "input_std", "bn_eps", "init", "init_sha256",
              "init_layout", "init_sigma_head", "finetune_lr_mult", "freeze_steps"):
        del old[k]
    assert TrainConfig.from_dict(old) == cfg
    assert Preprocess.from_config(old) == Preprocess()
    model = build_model(cfg)
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"config": old, "model": model.state_dict(), "step": 3}, tmp_path / "run" / "checkpoints" / "last.pt")
    m = load_model(tmp_path / "run")
    assert m.meta["step"] == 3 and m.preprocess == Preprocess()
    mu, _ = m.embed(faces)
    assert np.isfinite(mu).all()


# ------------------------------------------------------------------------------------------------
# the commands: train --init, eval / embed / export --model FILE, export --format arcface-torch
# ------------------------------------------------------------------------------------------------
def _run(args: list[str]):
    from click.testing import CliRunner

    from maskkit.cli import main

    return CliRunner().invoke(main, args)


def test_cli_train_init_records_the_file_and_starts_from_its_mu(tmp_path, small_shards, faces):
    sd = random_state(scaled_layout("r18", 0.25), seed=7)
    wpath = tmp_path / "backbone.pth"
    torch.save(sd, wpath)
    run = tmp_path / "run"
    common = ["train", "--data", str(small_shards), "--method", "maskdul", "--batch-size", "4", "--num-workers", "1",
              "--steps-per-epoch", "3", "-q", "--set", "tensorboard=false", "--set", "shuffle_buffer=16"]
    res = _run(common + ["--out", str(run), "--init", str(wpath), "--freeze-steps", "1", "--max-steps", "1"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["backbone"], cfg["width"], cfg["init"]) == ("r18", 0.25, str(wpath.resolve()))
    assert cfg["init_sha256"] == hashlib.sha256(wpath.read_bytes()).hexdigest()
    assert cfg["init_layout"] == "arcface_torch r18 w0.25" and cfg["finetune_lr_mult"] == 0.1
    # one frozen step: the run's mu is the source network's, on the same faces, both branches
    m = load_model(run)
    with torch.no_grad():
        ref = ref_forward(sd, arc_input(faces))
    for flags in (np.zeros(2, bool), np.ones(2, bool)):
        assert _rel(m.embed(faces, flags)[0], ref) < 1e-5
    # an explicit architecture the file does not have: one line, nothing trained
    res = _run(common + ["--out", str(tmp_path / "bad"), "--init", str(wpath), "--backbone", "r50"])
    assert res.exit_code == 2 and "backbone 'r50' (the weights have 'r18')" in res.output
    assert not (tmp_path / "bad").exists()
    # --resume with another --init: the checkpoint wins, with a note
    torch.save(random_state(scaled_layout("r18", 0.25), seed=8), tmp_path / "other.pth")
    res = _run(["train", "--out", str(run), "--resume", "--init", str(tmp_path / "other.pth"), "--max-steps", "2",
                "-q"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "the checkpoint wins" in res.output
    assert json.loads((run / "config.json").read_text())["init"] == str(wpath.resolve())


def test_cli_eval_embed_export_take_a_weights_file(tmp_path, faces):
    from maskkit.training.eval.evalsets import write_bin

    # a MagFace checkpoint: BGR [0, 1] input, BN eps 2e-5, its classifier dropped
    sd = random_state(scaled_layout("r18", 0.25), seed=9, features_scale_one=False)
    wpath = tmp_path / "magface_epoch_00025.pth"
    torch.save({"epoch": 25, "state_dict": {"module.features." + k: v for k, v in sd.items()}
                | {"module.fc.weight": torch.randn(512, 3)}}, wpath)
    rng = np.random.default_rng(0)
    views = [np.roll(faces[i % 2], int(rng.integers(-6, 7)), axis=1) for i in range(40)]
    write_bin(tmp_path / "pairs.bin", views, [i % 2 == 0 for i in range(20)])
    res = _run(["eval", "--model", str(wpath), "--bin", str(tmp_path / "pairs.bin"), "--mask-side", "none",
                "-q"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    home = tmp_path / "magface_epoch_00025-eval"
    metrics = json.loads((home / "pairs-verification-masknone" / "metrics.json").read_text())
    assert metrics["label"] == "magface_epoch_00025 (magface r18 w0.25)" and metrics["method"] == "magface"
    assert (home / "pairs-verification-masknone.json").is_file()
    res = _run(["eval", "--compare", str(wpath)])
    assert res.exit_code == 0 and "magface_epoch_00025 (magface" in res.output, res.output

    # embed: the file's own preprocessing (BGR [0, 1], eps 2e-5), as MagFace's gen_feat.py
    src = tmp_path / "faces" / "someone"
    src.mkdir(parents=True)
    for i, f in enumerate(faces):
        cv2.imwrite(str(src / f"{i}.png"), f[:, :, ::-1])
    res = _run(["embed", "--model", str(wpath), "--src", str(tmp_path / "faces"), "--out", str(tmp_path / "e.npz"),
                "--no-flip", "--aligned", "-q"])  # the crops as they are (they are not on the template)
    assert res.exit_code == 0, res.output + repr(res.exception)
    z = np.load(tmp_path / "e.npz")
    with torch.no_grad():
        ref = ref_forward(sd, magface_input(faces), eps=2e-5).numpy()
    ref_unit = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    order = np.argsort([str(p) for p in z["paths"]])
    assert np.abs(z["mu"][order] - ref_unit).max() < 1e-5  # unit vectors: absolute = relative

    # export ONNX: the metadata carries the preprocessing, and onnx_embed applies it
    import onnxruntime as ort

    from maskkit.training.eval.export import onnx_embed

    res = _run(["export", "--model", str(wpath), "-o", str(tmp_path / "m.onnx")])
    assert res.exit_code == 0 and "BGR" in res.output, res.output
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert (meta["color"], meta["mean"], meta["std"], meta["bn_eps"]) == ("BGR", "0.0", "1.0", "2e-05")
    mu_onnx, _ = onnx_embed(sess, faces, np.zeros(2, bool))
    assert _rel(torch.from_numpy(mu_onnx), torch.from_numpy(ref)) < 1e-4  # onnxruntime vs torch kernels
    # the deprecated spelling still works, with a note
    res = _run(["export", "--model", str(wpath), "--onnx", str(tmp_path / "old.onnx"), "--no-verify"])
    assert res.exit_code == 0 and "deprecated" in res.output and (tmp_path / "old.onnx").is_file()
    # arcface-torch from a MagFace file: arcface_torch keys, the MagFace preprocessing named
    res = _run(["export", "--model", str(wpath), "--format", "arcface-torch", "-o", str(tmp_path / "b.pth")])
    assert res.exit_code == 0 and "BGR" in res.output, res.output
    assert [(k, tuple(v.shape)) for k, v in torch.load(tmp_path / "b.pth", weights_only=True).items()] == \
        scaled_layout("r18", 0.25)
    # a file that is no IResNet: one line, no traceback
    torch.save({"weight": torch.zeros(3)}, tmp_path / "nope.pth")
    res = _run(["export", "--model", str(tmp_path / "nope.pth"), "-o", str(tmp_path / "n.onnx")])
    assert res.exit_code == 1 and "no arcface_torch or MagFace IResNet" in res.output and "nearest: none" in res.output
    assert res.output.strip().count("\n") == 0, res.output


def test_cli_export_arcface_torch_branch_of_a_run(tmp_path, faces):
    torch.manual_seed(2)
    cfg = TrainConfig(method="maskdul", backbone="r18", width=0.25, embedding_size=64, dropout=0.0)
    model = _with_stats(build_model(cfg), np.concatenate([faces, faces]), np.array([False, False, True, True]))
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(cfg.to_json())
    torch.save({"config": cfg.to_dict(), "model": model.state_dict(), "step": 0}, run / "checkpoints" / "last.pt")
    res = _run(["export", "--model", str(run), "--format", "arcface-torch", "--branch", "masked",
                "-o", str(tmp_path / "masked.pth")])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "sigma head dropped" in res.output and "width 0.25" in res.output
    xf = torch.from_numpy(faces).permute(0, 3, 1, 2).float().contiguous()
    mu_file, _ = load_model(tmp_path / "masked.pth").embed(xf)
    mu_run, _ = load_model(run).embed(xf, torch.ones(2, dtype=torch.bool))
    assert torch.equal(mu_file, mu_run)


# ------------------------------------------------------------------------------------------------
# weights saved through a wrapper (issue 20): real wrappers' keys, both entry points
# ------------------------------------------------------------------------------------------------
def module_of(sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A module tree whose state_dict is ``sd`` (floating tensors as parameters, others as
    buffers), so real wrappers (DataParallel, torch.compile) can name its keys."""
    root = torch.nn.Module()
    for k, v in sd.items():
        *path, name = k.split(".")
        m = root
        for p in path:
            if not hasattr(m, p):
                m.add_module(p, torch.nn.Module())
            m = getattr(m, p)
        if v.is_floating_point():
            m.register_parameter(name, torch.nn.Parameter(v.clone(), requires_grad=False))
        else:
            m.register_buffer(name, v.clone())
    return root


def _magface_builder(sd: dict[str, torch.Tensor]) -> torch.nn.Module:
    """MagFace's SoftmaxBuilder shape: the IResNet as ``features``, the MagLinear as ``fc``."""
    b = torch.nn.Module()
    b.features = module_of(sd)
    b.fc = torch.nn.Module()
    b.fc.register_parameter("weight", torch.nn.Parameter(torch.randn(512, 5), requires_grad=False))
    return b


def _parent(**children) -> torch.nn.Module:
    p = torch.nn.Module()
    for name, child in children.items():
        p.add_module(name, child)
    return p


DP, COMPILE = torch.nn.DataParallel, torch.compile
#: name -> (how the file is made from the plain state_dict, layout read, wrappers the record names)
WRAPPED = {
    "DataParallel": (lambda sd: DP(module_of(sd)).state_dict(), "arcface_torch", "module."),
    "torch.compile": (lambda sd: COMPILE(module_of(sd)).state_dict(), "arcface_torch", "_orig_mod."),
    "compile(DataParallel)": (lambda sd: COMPILE(DP(module_of(sd))).state_dict(), "arcface_torch", "_orig_mod.module."),
    "DataParallel(compile)": (lambda sd: DP(COMPILE(module_of(sd))).state_dict(), "arcface_torch", "module._orig_mod."),
    "{'model': sd}": (lambda sd: {"model": sd, "epoch": 7}, "arcface_torch", ""),
    "{'model_state_dict': DataParallel}": (lambda sd: {"model_state_dict": DP(module_of(sd)).state_dict(),
                                                       "optimizer_state_dict": {}}, "arcface_torch", "module."),
    "{'net': sd}": (lambda sd: {"net": sd}, "arcface_torch", ""),
    "{'model': {'state_dict': DataParallel}}": (lambda sd: {"model": {"state_dict": DP(module_of(sd)).state_dict()}},
                                                "arcface_torch", "module."),
    "Lightning self.backbone": (lambda sd: {"state_dict": _parent(backbone=module_of(sd)).state_dict(),
                                            "epoch": 2, "hyper_parameters": {"lr": 0.1}}, "arcface_torch", "backbone."),
    "{'ema_weights': sd} (a key of no known name)": (lambda sd: {"ema_weights": sd, "step": 3}, "arcface_torch", ""),
    "MagFace builder under torch.compile": (lambda sd: {"state_dict": COMPILE(_magface_builder(sd)).state_dict()},
                                            "magface", "_orig_mod.features."),
    "MagFace builder, DataParallel(compile)": (lambda sd: {"state_dict": DP(COMPILE(_magface_builder(sd))).state_dict()},
                                               "magface", "module._orig_mod.features."),
}


@pytest.mark.parametrize("variant", list(WRAPPED))
def test_weights_saved_through_a_wrapper_load_for_model_and_init(tmp_path, faces, variant):
    make, layout, wrappers = WRAPPED[variant]
    sd = random_state(scaled_layout("r18", 0.25), seed=11, features_scale_one=layout == "arcface_torch")
    path = tmp_path / "wrapped.pth"
    torch.save(make(sd), path)
    with torch.no_grad():
        ref = ref_forward(sd, magface_input(faces), eps=2e-5) if layout == "magface" else ref_forward(sd, arc_input(faces))
    # --model (eval / embed / export): the source network's mu, with its own preprocessing
    m = load_model(path)
    assert m.meta["layout"] == f"{layout} r18 w0.25"
    assert _rel(m.embed(faces)[0], ref) < 1e-5
    # --init: both start blocks of a two-stream model start from it
    src = read_weights(path)
    assert (wrappers and f"wrapper {wrappers} stripped" in src.container) or (not wrappers and "stripped" not in src.container)
    cfg = apply_init_config(TrainConfig(method="maskdul", init=str(path), dropout=0.0), src)
    model = build_model(cfg)
    init_model(model, cfg, src)
    im = InferenceModel(model, cfg.to_dict())
    for flags in (np.zeros(2, bool), np.ones(2, bool)):
        assert _rel(im.embed(faces, flags)[0], ref) < 1e-5
    if layout == "magface":
        assert src.dropped == [wrappers[: -len("features.")] + "fc.weight"]  # the classifier, named as in the file


def test_a_maskkit_checkpoint_saved_from_a_compiled_model_loads(tmp_path, faces):
    torch.manual_seed(4)
    cfg = TrainConfig(method="maskdul", backbone="r18", width=0.25, embedding_size=64, dropout=0.0)
    model = _with_stats(build_model(cfg), np.concatenate([faces, faces]), np.array([False, False, True, True]))
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(cfg.to_json())
    torch.save({"config": cfg.to_dict(), "model": COMPILE(model).state_dict()}, run / "checkpoints" / "last.pt")
    want = InferenceModel(model, cfg.to_dict())
    for flags in (np.zeros(2, bool), np.ones(2, bool)):
        assert np.array_equal(load_model(run).embed(faces, flags)[0], want.embed(faces, flags)[0])
    assert read_weights(run).layout == "maskkit"


def _dp_without_fc(sd):
    return {k: v for k, v in DP(module_of(sd)).state_dict().items() if not k.startswith("module.fc.")}


#: name -> (file content from the plain r18 state_dict, what the one-line error must say)
UNREADABLE = {
    "DataParallel backbone without its fc": (
        _dp_without_fc, ["wrapper module. stripped", "nearest: arcface_torch r18, 154 of 156 keys",
                         "lacking fc.bias, fc.weight"]),
    "backbone beside a head that is no wrapper": (
        lambda sd: _parent(backbone=module_of(sd), head=module_of({"kernel": torch.zeros(64, 10)})).state_dict(),
        ["nearest: arcface_torch r18 under 'backbone.', 156 of 156 keys", "1 other key (head.kernel)"]),
    "MagFace builder with a stray key": (
        lambda sd: {"state_dict": {**DP(_magface_builder(sd)).state_dict(), "module.extra.weight": torch.zeros(2)}},
        ["nearest: MagFace r18 under 'features.', 156 of 156 keys", "other keys (extra.weight, fc.weight)"]),
    "a torchvision-style ResNet": (
        lambda sd: {"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.zeros(64),
                    "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1), "fc.weight": torch.zeros(1000, 2048)},
        ["4 tensors", "nearest: arcface_torch r18, 4 of 156 keys", "lacking"]),
    "no tensors at all": (lambda sd: {"epoch": 3, "optimizer": {"state": {}}},
                          ["no state_dict found", "keys epoch, optimizer"]),
    "a maskkit FaceModel without its config": (
        lambda sd: {"model": build_model(TrainConfig(method="arcface", backbone="r18", width=0.25)).state_dict()},
        ["a maskkit FaceModel state_dict without its config", "run folder"]),
}


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_no_layout_is_one_line_naming_what_was_found_and_the_nearest_layout(tmp_path, case):
    make, says = UNREADABLE[case]
    path = tmp_path / "w.pth"
    torch.save(make(random_state(scaled_layout("r18", 0.25), seed=12)), path)
    with pytest.raises(WeightsError) as e:
        read_weights(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    for s in says:
        assert s in msg, msg
    if "MagFace" not in case:  # the old message called any such file a "MagFace checkpoint"
        assert "MagFace checkpoint" not in msg and "nearest: MagFace" not in msg


def test_cli_train_init_and_eval_model_take_a_dataparallel_file(tmp_path, small_shards, faces):
    sd = random_state(scaled_layout("r18", 0.25), seed=13)
    wpath = tmp_path / "dp_backbone.pth"
    torch.save(DP(module_of(sd)).state_dict(), wpath)
    run = tmp_path / "run"
    res = _run(["train", "--data", str(small_shards), "--method", "maskdul", "--batch-size", "4", "--num-workers", "1",
                "--steps-per-epoch", "3", "-q", "--set", "tensorboard=false", "--set", "shuffle_buffer=16",
                "--out", str(run), "--init", str(wpath), "--freeze-steps", "1", "--max-steps", "1"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert json.loads((run / "config.json").read_text())["init_layout"] == "arcface_torch r18 w0.25"
    with torch.no_grad():
        ref = ref_forward(sd, arc_input(faces))
    assert _rel(load_model(run).embed(faces)[0], ref) < 1e-5
    # the same file without its fc: one line naming the nearest layout and what it lacks
    torch.save(_dp_without_fc(sd), tmp_path / "nofc.pth")
    res = _run(["export", "--model", str(tmp_path / "nofc.pth"), "-o", str(tmp_path / "n.onnx")])
    assert res.exit_code == 1 and res.output.strip().count("\n") == 0, res.output
    assert "lacking fc.bias, fc.weight" in res.output and "MagFace checkpoint" not in res.output
