"""The training recipe's promises, each against an independent statement of it.

* the lr schedule (x0.1 at epochs 10, 18, 25, from the fractional epoch, with optional warm-up);
* RandomCrop (zero-pad 4, crop back) and the horizontal flip on a real face, pixel for pixel;
* the two branches of the two-stream model start from identical weights;
* IResNet-18/34/50/100 parameter counts derived from arcface_torch's block layout.

The engine-level parts (lr per step as trained, clipping at 5, weight decay, resume at another
world size) are in ``test_train.py``, which owns the shard fixtures.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from maskkit.training.config import TrainConfig
from maskkit.training.data import augment
from maskkit.training.engine import StepSchedule
from maskkit.training.iresnet import count_parameters, iresnet
from maskkit.training.model import build_model


# -- lr schedule ----------------------------------------------------------------------------------
@pytest.mark.parametrize("epoch,lr", [(0.0, 0.05), (9.99, 0.05), (10.0, 0.005), (17.99, 0.005), (18.0, 5e-4),
                                      (24.99, 5e-4), (25.0, 5e-5), (29.99, 5e-5)])
def test_paper_schedule_at_the_milestones(epoch, lr):
    """The default config's schedule: 0.05, divided by 10 at epochs 10, 18 and 25 (a fractional
    epoch just before a milestone keeps the old lr)."""
    cfg = TrainConfig()
    sched = StepSchedule(cfg.lr * cfg.batch_size / cfg.lr_base_batch, cfg.milestones, cfg.gamma, cfg.warmup_epochs)
    assert sched.lr_at(epoch) == pytest.approx(lr, rel=1e-12)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert sched.set(opt, epoch) == opt.param_groups[0]["lr"] == sched.lr_at(epoch)


def test_warmup_is_linear_in_the_fractional_epoch():
    sched = StepSchedule(0.1, (1,), 0.1, warmup_epochs=2.0)
    for e, lr in [(0.0, 0.1 * 1e-3), (0.25, 0.1 * 0.125), (0.5, 0.1 * 0.25), (0.999, 0.1 * 0.4995),
                  (1.0, 0.01 * 0.5), (1.5, 0.01 * 0.75), (2.0, 0.01), (3.0, 0.01)]:
        assert sched.lr_at(e) == pytest.approx(lr, rel=1e-12), e


# -- augmentation -------------------------------------------------------------------------------
class _FixedRng:
    """Stands in for ``np.random.Generator``: returns the given crop offsets and flip draw."""

    def __init__(self, dy: int, dx: int, u: float):
        self.dy, self.dx, self.u, self.calls = dy, dx, u, []

    def integers(self, low, high, size=None):
        self.calls.append((low, high, size))
        return np.array([self.dy, self.dx])

    def random(self):
        return self.u


@pytest.fixture(scope="module")
def face112(astronaut) -> np.ndarray:
    import cv2

    return cv2.resize(np.ascontiguousarray(astronaut[30:190, 170:330]), (112, 112), interpolation=cv2.INTER_AREA)


@pytest.mark.parametrize("dy,dx", [(0, 0), (8, 8), (4, 4), (0, 8), (8, 0), (3, 6)])
@pytest.mark.parametrize("u", [0.2, 0.7])
def test_crop_pad_and_hflip_on_a_real_face(face112, dy, dx, u):
    """RandomCrop = zero-pad 4 px on each side, take the 112x112 window at (dy, dx) in 0..8; then
    mirror left-right when the uniform draw is < 0.5. (4, 4) without a flip is the identity."""
    rng = _FixedRng(dy, dx, u)
    out = augment(face112, rng, pad=4, hflip=True)
    expected = np.pad(face112, ((4, 4), (4, 4), (0, 0)))[dy:dy + 112, dx:dx + 112]
    if u < 0.5:
        expected = expected[:, ::-1]
    assert out.shape == face112.shape and out.dtype == np.uint8
    assert np.array_equal(out, expected)
    assert rng.calls == [(0, 9, 2)]  # offsets drawn uniformly from 0..2*pad inclusive
    if (dy, dx, u) == (4, 4, 0.7):
        assert np.array_equal(out, face112)
    assert np.array_equal(augment(face112, _FixedRng(dy, dx, u), pad=0, hflip=False), face112)


def test_crop_offsets_and_flips_are_uniform(face112):
    """With a real generator every one of the 81 offsets occurs and about half the images are
    mirrored (2000 draws: a binomial 1000 +- 4.5 sd band)."""
    padded = np.pad(face112, ((4, 4), (4, 4), (0, 0)))
    windows = {}  # every possible output, by its bytes (a real face: no two coincide)
    for dy in range(9):
        for dx in range(9):
            win = padded[dy:dy + 112, dx:dx + 112]
            windows[np.ascontiguousarray(win).tobytes()] = (dy, dx, False)
            windows[np.ascontiguousarray(win[:, ::-1]).tobytes()] = (dy, dx, True)
    assert len(windows) == 162
    rng = np.random.default_rng(0)
    seen, flips = set(), 0
    for _ in range(2000):
        hit = windows.get(augment(face112, rng, pad=4, hflip=True).tobytes())
        assert hit is not None, "an augmented image is no (mirrored) padded window of the input"
        seen.add(hit[:2])
        flips += hit[2]
    assert len(seen) == 81
    assert abs(flips - 1000) < 4.5 * np.sqrt(2000 * 0.25)


# -- two streams ----------------------------------------------------------------------------------
@pytest.mark.parametrize("split", ["stem", "layer1.0", "layer1"])
def test_two_branches_start_identical(split):
    torch.manual_seed(0)
    m = build_model(TrainConfig(method="maskdul", backbone="r18", width=0.25, split_point=split))
    face, masked = m.branch_face.state_dict(), m.branch_masked.state_dict()
    assert list(face) == list(masked) and len(face) > 0
    for k in face:
        assert torch.equal(face[k], masked[k]), k
    # not trivially equal: the conv weights are random (N(0, 0.1))
    conv = next(v for k, v in face.items() if v.dim() == 4)
    assert float(conv.std()) > 0.05
    # and they are separate tensors: training one leaves the other
    next(m.branch_masked.parameters()).data.add_(1.0)
    assert not torch.equal(next(m.branch_face.parameters()), next(m.branch_masked.parameters()))


# -- parameter counts -----------------------------------------------------------------------------
# insightface recognition/arcface_torch/backbones/iresnet.py: blocks per stage of iresnet18/34/50/100
ARCFACE_TORCH_LAYERS = {"r18": (2, 2, 2, 2), "r34": (3, 4, 6, 3), "r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3)}


def _arcface_torch_parameters(layers: tuple[int, ...]) -> int:
    """Parameters of arcface_torch's IResNet from its layer order (width 1, 112x112, 512-D):
    conv1 3x3 3->64 (no bias), bn1, prelu; per IBasicBlock(cin -> c): bn1(cin), conv1 3x3
    cin->c, bn2(c), prelu(c), conv2 3x3 c->c, bn3(c), and on each stage's first (stride-2) block
    a downsample conv1x1 cin->c + BN(c); then bn2(512), fc(512*7*7 -> 512, with bias),
    features BN1d(512). A BN has 2 parameters per channel, a PReLU 1."""
    bn = 2
    n = 9 * 3 * 64 + bn * 64 + 64
    cin = 64
    for c, blocks in zip((64, 128, 256, 512), layers):
        for b in range(blocks):
            n += bn * cin + 9 * cin * c + bn * c + c + 9 * c * c + bn * c
            if b == 0:
                n += cin * c + bn * c
            cin = c
    return n + bn * 512 + 512 * 49 * 512 + 512 + bn * 512


@pytest.mark.parametrize("name", ["r18", "r34", "r50", "r100"])
def test_parameter_counts_follow_the_block_layout(name):
    """r18 24,025,600; r34 34,139,328; r50 43,590,848 (arcface_torch's 43.59 M); r100 65,156,160."""
    expected = {"r18": 24_025_600, "r34": 34_139_328, "r50": 43_590_848, "r100": 65_156_160}[name]
    assert _arcface_torch_parameters(ARCFACE_TORCH_LAYERS[name]) == expected
    with torch.device("meta"):  # no memory, instant
        net = iresnet(name)
    assert count_parameters(net) == expected
