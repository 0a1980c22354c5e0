"""IResNet shapes and sizes, two-stream routing, DUL head."""
from __future__ import annotations

import json

import pytest
import torch

from maskkit.training.config import TrainConfig
from maskkit.training.iresnet import count_macs, count_parameters, iresnet
from maskkit.training.model import FaceModel, build_model, reparameterize


def _calibrated(m: FaceModel, x: torch.Tensor, masked=None) -> FaceModel:
    """Set BatchNorm running stats from one batch, then eval(): an untrained IResNet with
    insightface's N(0, 0.1) conv init overflows on the default running stats (mean 0, var 1)."""
    bns = [b for b in m.modules() if isinstance(b, torch.nn.modules.batchnorm._BatchNorm)]
    for b in bns:
        b.momentum = 1.0
    m.train()
    with torch.no_grad():
        m(x, masked)
    for b in bns:
        b.momentum = 0.1
    return m.eval()


def _meta(name: str, **kw):
    with torch.device("meta"):
        return iresnet(name, **kw)


def test_iresnet_parameter_counts_and_macs():
    # insightface arcface_torch sizes (r50 is the paper's backbone: 43.59 M params, 6.31 GMACs)
    assert count_parameters(_meta("r50")) == 43_590_848
    assert round(count_parameters(_meta("r50")) / 1e6, 2) == 43.59
    assert round(count_macs(_meta("r50")) / 1e9, 2) == 6.31
    assert round(count_parameters(_meta("r18")) / 1e6, 2) == 24.03
    assert round(count_parameters(_meta("r34")) / 1e6, 2) == 34.14
    assert round(count_parameters(_meta("r100")) / 1e6, 2) == 65.16
    blocks = {n: sum(1 for u, _ in _meta(n).units() if u != "stem") for n in ("r18", "r34", "r50", "r100")}
    assert blocks == {"r18": 8, "r34": 16, "r50": 24, "r100": 49}


def test_two_stream_r50_adds_only_the_start_block_and_sigma_head():
    with torch.device("meta"):
        single = FaceModel("r50")
        two = FaceModel("r50", two_stream=True, dul=True)
    start = sum(p.numel() for p in two.branch_face.parameters())
    head = sum(p.numel() for p in two.logvar_head.parameters())
    assert count_parameters(single) == 43_590_848
    assert count_parameters(two) == 43_590_848 + start + head
    assert two.branch_names == ["stem", "layer1.0"]
    # stem (conv 1728 + BN 128 + PReLU 64) + first IBasicBlock incl. its 1x1 downsample
    assert start == 1728 + 128 + 64 + (128 + 36864 + 128 + 64 + 36864 + 128 + 4096 + 128)


def test_forward_shapes_narrow():
    torch.manual_seed(0)
    x = torch.randn(3, 3, 112, 112)
    m = _calibrated(FaceModel("r18", width=0.25, two_stream=True, dul=True), x, torch.tensor([True, False, True]))
    mu, sigma = m(x, torch.tensor([True, False, True]))
    assert mu.shape == sigma.shape == (3, 512)
    assert mu.dtype == sigma.dtype == torch.float32 and bool((sigma > 0).all())
    mu1, s1 = _calibrated(FaceModel("r18", width=0.25), x)(x)
    assert mu1.shape == (3, 512) and s1 is None
    with pytest.raises(ValueError, match="flags"):
        m(x, torch.tensor([True]))


@pytest.mark.parametrize("split,names", [("stem", ["stem"]), ("layer1.0", ["stem", "layer1.0"]),
                                         ("layer1", ["stem", "layer1.0", "layer1.1"])])
def test_split_points(split, names):
    m = FaceModel("r18", width=0.25, two_stream=True, split_point=split)
    assert m.branch_names == names
    with pytest.raises(ValueError, match="split_point"):
        FaceModel("r18", width=0.25, two_stream=True, split_point="layer9")


def _grad_norms(module):
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def test_routing_masked_gradients_reach_only_their_branch():
    torch.manual_seed(1)
    # 32x32 inputs (2x2 before the head): routing does not depend on the input size
    m = FaceModel("r18", width=0.25, two_stream=True, dul=True, input_size=32)
    # make the two branches different so routing is observable in the outputs too
    with torch.no_grad():
        for p in m.branch_masked.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(6, 3, 32, 32)
    masked = torch.tensor([True, False, False, True, False, True])
    _calibrated(m, x, masked)  # eval: BN on running stats, no coupling of samples through batch stats
    for rows, live, dead in ((masked, m.branch_masked, m.branch_face), (~masked, m.branch_face, m.branch_masked)):
        m.zero_grad(set_to_none=True)
        mu, sigma = m(x, masked)
        (mu[rows].pow(2).sum() + sigma[rows].sum()).backward()
        assert _grad_norms(live) > 0
        assert _grad_norms(dead) == 0.0  # grads exist (zero-size paths) but are exactly zero
    # per-sample routing equals running each sample through its own branch alone
    with torch.no_grad():
        mu, _ = m(x, masked)
        for i in range(6):
            branch = m.branch_masked if masked[i] else m.branch_face
            ref = m.mu_head(m.trunk(branch(x[i:i + 1])))
            assert torch.allclose(mu[i:i + 1], ref, atol=1e-5)
        m.routing = "where"
        assert torch.allclose(m(x, masked)[0], mu, atol=1e-5)
        m.routing = "index"
    # a grouped batch (unmasked first, as the loader delivers it) is routed by slicing: one int
    order = torch.argsort(masked.to(torch.int8), stable=True)
    xg, mg = x[order], masked[order]
    assert FaceModel.route(mg) == 3 and isinstance(FaceModel.route(masked), tuple)
    assert FaceModel.route(torch.zeros(4, dtype=torch.bool)) == 4 and FaceModel.route(torch.ones(4, dtype=torch.bool)) == 0
    grads = []
    for xx, mm in ((x, masked), (xg, mg)):
        m.zero_grad(set_to_none=True)
        mu_r, sigma_r = m(xx, mm)
        (mu_r[mm].pow(2).sum() + sigma_r[~mm].sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in (*m.branch_face.parameters(), *m.branch_masked.parameters())]))
        if mm is mg:  # slicing gives the index route's outputs, sample for sample
            assert torch.allclose(mu_r, mu[order], atol=1e-5)
    # The two routes sum the same terms in a different order (and the thread count changes the
    # blocking of the conv backward), so each element carries the rounding error of the largest
    # partial sums, not of its own magnitude: measured up to 3e-4 on gradients up to ~400. The
    # tolerance therefore scales with max|g| (float32 eps 1.2e-7 times a few hundred terms); a
    # routing bug moves whole gradients, i.e. errors of order max|g|.
    scale = grads[0].abs().max()
    assert scale > 0
    assert (grads[0] - grads[1]).abs().max() <= 1e-5 * scale


def test_routing_with_an_all_unmasked_batch_keeps_every_parameter_in_the_graph():
    torch.manual_seed(2)
    m = FaceModel("r18", width=0.25, two_stream=True, dul=True, input_size=32).train()
    mu, logvar = m.encode(torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.bool))
    (mu.sum() + logvar.sum()).backward()
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trainable)  # DDP-safe without find_unused_parameters
    assert _grad_norms(m.branch_masked) == 0.0 and _grad_norms(m.branch_face) > 0


def test_reparameterize_and_build_model():
    g = torch.Generator().manual_seed(3)
    mu, logvar = torch.zeros(20000, 2), torch.log(torch.tensor([[0.25, 4.0]])).expand(20000, 2)
    s = reparameterize(mu, logvar, g)
    assert torch.allclose(s.std(0), torch.tensor([0.5, 2.0]), rtol=0.03)
    for method, two, dul in (("arcface", False, False), ("dul-mag", False, True), ("maskdul", True, True)):
        m = build_model(TrainConfig(method=method, backbone="r18", width=0.25))
        assert m.two_stream == two and m.dul == dul
    assert build_model(TrainConfig(method="arcface", backbone="r18", width=0.25, two_stream=True)).two_stream


def test_config_json_round_trip(tmp_path):
    cfg = TrainConfig(data="d", out="o", method="dul", milestones=(1, 2), kl_reduction="mean", xi_detach=False)
    cfg.save(tmp_path / "c.json")
    assert TrainConfig.load(tmp_path / "c.json") == cfg
    with pytest.raises(ValueError, match="method"):
        TrainConfig(method="cosface")
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({"nope": 1})


def test_old_and_newer_config_json_files_still_load(tmp_path, caplog):
    """A config.json written before keys were added (missing keys: defaults), one with a key this
    version does not know (ignored, named once in a warning) and one with the ``resolved`` record
    all load; a dict passed in code stays strict."""
    old = {"data": "shards", "out": "runs/x", "method": "maskdul", "backbone": "r18", "width": 0.25,
           "batch_size": 32, "lr": 0.05, "epochs": 2, "milestones": [1], "num_workers": 4, "amp": "bf16",
           "device": "auto", "seed": 7, "tensorboard": True}  # no compile_mode, split_point, ... (older files)
    (tmp_path / "old.json").write_text(json.dumps(old))
    cfg = TrainConfig.load(tmp_path / "old.json")
    assert (cfg.method, cfg.batch_size, cfg.milestones, cfg.num_workers, cfg.seed) == ("maskdul", 32, (1,), 4, 7)
    assert cfg.compile_mode == "default" and cfg.split_point == "layer1.0" and cfg.kl_reduction == "sum"
    newer = dict(old, some_future_option=3, resolved={"device": "cpu", "amp": "none", "tensorboard": False,
                                                      "num_workers": 2})
    (tmp_path / "newer.json").write_text(json.dumps(newer))
    with caplog.at_level("WARNING", logger="maskkit.training.config"):
        assert TrainConfig.load(tmp_path / "newer.json") == cfg
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "some_future_option" in warned[0] and "resolved" not in warned[0]
    assert build_model(dict(newer, width=0.25)).two_stream  # a checkpoint's config dict, same leniency
    with pytest.raises(ValueError, match="some_future_option"):
        TrainConfig.from_dict(newer)
