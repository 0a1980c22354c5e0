"""ONNX export: onnxruntime equals PyTorch within 1e-4 on real aligned faces, batch 1 and 7."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner


@pytest.fixture(scope="module")
def faces(astronaut, grace_hopper, celeb_aligned_optional):
    """Real aligned faces: astronaut and grace_hopper through maskkit's aligner (always there),
    plus celeb-aligned crops when the shared data is present; half of them get a synthetic mask."""
    from maskkit.training.eval.evalsets import FaceAligner, apply_masks

    al = FaceAligner()
    imgs = [al(astronaut)[0], al(grace_hopper)[0]]
    imgs += celeb_aligned_optional
    imgs = np.stack(imgs)
    mo = apply_masks(imgs, np.arange(len(imgs)) % 2 == 1, seed=0, progress=False)
    assert mo.n_masked == mo.n_requested  # frontal real faces: every mask fits
    images = np.concatenate([imgs, mo.images[mo.masked]])
    flags = np.concatenate([np.zeros(len(imgs), bool), np.ones(int(mo.n_masked), bool)])
    return images, flags


@pytest.fixture(scope="module")
def celeb_aligned_optional():
    """First image of four celeb-aligned identities when the shared data is there (the test
    still runs on the two dependency-shipped faces without it)."""
    import os
    from pathlib import Path

    shared = Path(os.environ.get("MASKKIT_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    d = shared / "celeb-aligned"
    if not d.exists():
        return []
    from maskkit.io.image_io import load_image

    return [load_image(sorted(p.glob("*.jpg"))[0]) for p in sorted(d.iterdir())[:4] if p.is_dir()]


def _model(method: str, images: np.ndarray, flags: np.ndarray):
    """A narrow model with non-trivial BatchNorm statistics and distinct face / masked branches."""
    from maskkit.training.api import InferenceModel, normalize
    from maskkit.training.config import TrainConfig
    from maskkit.training.model import build_model

    torch.manual_seed(0)
    cfg = TrainConfig(method=method, backbone="r18", width=0.25, embedding_size=128, dropout=0.0)
    m = build_model(cfg)
    if m.two_stream:
        with torch.no_grad():
            for p in m.branch_masked.parameters():
                p.add_(0.05 * torch.randn_like(p))
    # BatchNorm running statistics: the exact average over real faces and their mirrors, so
    # the eval-mode outputs have a trained model's scale (log sigma^2 ~ N(0, 1))
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None
    m.train()
    x = normalize(torch.from_numpy(np.concatenate([images, images[:, :, ::-1]])))
    with torch.no_grad():
        m(x, torch.from_numpy(np.concatenate([flags, flags])))
    return InferenceModel(m, cfg.to_dict())


@pytest.mark.parametrize("method", ["maskdul", "arcface"])
def test_onnx_matches_torch_on_real_faces(tmp_path, faces, method):
    import onnx
    import onnxruntime as ort

    from maskkit.training.eval.export import export_onnx, onnx_embed, verify_onnx

    images, flags = faces
    model = _model(method, images, flags)
    path = export_onnx(model, tmp_path / "m.onnx")
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["image", "masked"]
    outs = [o.name for o in proto.graph.output]
    assert outs == (["mu", "sigma"] if method == "maskdul" else ["mu"])
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["mean"] == "127.5" and meta["method"] == method

    checks = verify_onnx(model, path, images, flags, batch_sizes=(1, 7))
    assert [c.batch_size for c in checks] == [1, 7]
    for c in checks:
        assert c.max_abs_diff_mu < 1e-4, c
        if method == "maskdul":
            assert c.max_abs_diff_sigma < 1e-4, c
        else:
            assert c.max_abs_diff_sigma is None

    # the branch input matters for the two-stream model (and ONNX follows it per sample)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x7 = images[np.arange(7) % len(images)]
    mu_f, _ = onnx_embed(sess, x7, np.zeros(7, bool))
    mu_m, _ = onnx_embed(sess, x7, np.ones(7, bool))
    mixed = np.arange(7) % 2 == 1
    mu_x, _ = onnx_embed(sess, x7, mixed)
    if method == "maskdul":
        assert np.abs(mu_f - mu_m).max() > 1e-2
    else:
        assert np.abs(mu_f - mu_m).max() == 0.0
    np.testing.assert_allclose(mu_x, np.where(mixed[:, None], mu_m, mu_f), atol=1e-4)


def test_export_cli_from_run_dir(tmp_path, faces):
    from maskkit.cli import main

    images, flags = faces
    model = _model("maskdul", images, flags)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(model.config))
    torch.save({"config": model.config, "model": model.torch_module.state_dict(), "step": 0},
               run / "checkpoints" / "last.pt")
    out = tmp_path / "exp" / "model.onnx"
    res = CliRunner().invoke(main, ["export", "--model", str(run), "-o", str(out)])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert out.stat().st_size > 100_000
    assert "batch 1" in res.output and "batch 7" in res.output

    from maskkit.training.api import load_model
    from maskkit.training.eval.export import verify_onnx

    checks = verify_onnx(load_model(run), out, images, flags, batch_sizes=(7,))
    assert checks[0].max_abs_diff_mu < 1e-4 and checks[0].max_abs_diff_sigma < 1e-4
