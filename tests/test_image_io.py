"""image_io: every awkward encoding becomes RGB uint8 of the right picture; broken input gets a
clear reason; the pixel limit is enforced before decoding."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from maskkit.io.image_io import ImageError, decode_image, encode_jpeg, load_image, to_rgb_uint8
from zoo import HUGE, astronaut, grace_hopper, make_zoo


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    return root, make_zoo(root)


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


@pytest.mark.parametrize("rel, ref, tol", [
    ("modes/cmyk.jpg", "gh", 6.0),
    ("modes/gray.jpg", "gh_gray", 3.0),
    ("modes/gray16.png", "ast_gray", 0.6),
    ("modes/rgba.png", "ast", 1.0),
    ("modes/palette.png", "gh", 8.0),
    ("modes/exif_rotated.jpg", "gh", 3.0),
    ("modes/png_named.jpg", "gh", 0.01),
    ("modes/face.webp", "ast", 6.0),
    ("modes/face.tif", "gh", 0.01),
    ("modes/face.bmp", "ast", 0.01),
])
def test_modes_decode_to_the_same_picture(zoo, rel, ref, tol):
    root, _ = zoo
    gh, ast = grace_hopper(), astronaut()
    refs = {
        "gh": gh, "ast": ast,
        "gh_gray": np.repeat(np.asarray(Image.fromarray(gh).convert("L"))[..., None], 3, 2),
        "ast_gray": np.repeat(np.asarray(Image.fromarray(ast).convert("L"))[..., None], 3, 2),
    }
    rgb = load_image(root / rel)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    want = refs[ref]
    if rel == "modes/rgba.png":  # transparent corner composited on white
        assert (rgb[:40, :40] == 255).all()
        rgb, want = rgb[40:, 40:], want[40:, 40:]
    assert rgb.shape == want.shape, "orientation or size wrong"
    assert _mad(rgb, want) < tol


def test_exif_orientation_is_applied_not_ignored(zoo):
    root, _ = zoo
    gh = grace_hopper()
    raw = np.asarray(Image.open(root / "modes/exif_rotated.jpg").convert("RGB"))
    assert raw.shape[:2] == (gh.shape[1], gh.shape[0])  # stored sideways
    assert load_image(root / "modes/exif_rotated.jpg").shape == gh.shape


def test_sixteen_bit_is_scaled_not_clipped(zoo):
    root, _ = zoo
    rgb = load_image(root / "modes/gray16.png")
    assert rgb.max() > 200 and rgb.min() < 60  # clipping would saturate almost everything at 255
    assert (rgb[..., 0] == rgb[..., 1]).all()


@pytest.mark.parametrize("rel, reason", [
    ("broken/empty.jpg", "empty"),
    ("broken/truncated.jpg", "decode_error"),
    ("broken/corrupt.png", "decode_error"),
    ("broken/text.jpg", "decode_error"),
    (HUGE, "too_large"),
])
def test_broken_inputs_raise_with_reason(zoo, rel, reason):
    root, expected = zoo
    assert expected[rel] == reason
    with pytest.raises(ImageError) as ei:
        load_image(root / rel)
    assert ei.value.reason == reason
    assert ei.value.detail


def test_pixel_limit_is_checked_before_decoding(zoo):
    root, _ = zoo
    data = (root / HUGE).read_bytes()
    assert len(data) < 200_000  # a 400-megapixel image in a tiny file: decoding it would need >1 GB
    with pytest.raises(ImageError) as ei:
        decode_image(data, max_pixels=100_000_000)
    assert ei.value.reason == "too_large" and "20000x20000" in ei.value.detail
    # a lower limit refuses an ordinary image too, a higher one lets it through
    png = (root / "people/astronaut.png").read_bytes()
    with pytest.raises(ImageError):
        decode_image(png, max_pixels=512 * 512 - 1)
    assert decode_image(png, max_pixels=512 * 512).shape == (512, 512, 3)


def test_missing_file_is_read_error(tmp_path):
    with pytest.raises(ImageError) as ei:
        load_image(tmp_path / "nope.jpg")
    assert ei.value.reason == "read_error"


def test_decode_bytes_matches_load(zoo):
    root, _ = zoo
    p = root / "people/grace_hopper.jpg"
    assert np.array_equal(decode_image(p.read_bytes()), load_image(p))


def test_encode_jpeg_roundtrip_quality():
    ast = astronaut()
    jpg = encode_jpeg(ast, quality=95)
    assert jpg[:2] == b"\xff\xd8"
    back = np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB")).astype(np.float64)
    psnr = 10 * np.log10(255.0 ** 2 / ((back - ast) ** 2).mean())
    assert psnr > 33.0
    assert len(encode_jpeg(ast, quality=50)) < len(jpg)
    with pytest.raises(ValueError):
        encode_jpeg(ast.astype(np.float32))


def test_to_rgb_uint8_shapes():
    g16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    out = to_rgb_uint8(g16)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8 and out.max() == round(63000 / 257)
    assert to_rgb_uint8(np.zeros((4, 4, 4), np.uint8)).shape == (4, 4, 3)
    with pytest.raises(ImageError):
        to_rgb_uint8(np.zeros((4, 4, 2), np.uint8))
