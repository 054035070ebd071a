"""Decode + augment: shapes, determinism per seed, crop maths, normalisation, corrupt input."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipelines.data.augment import augment_image, crop_params, eval_image
from pipelines.data.config import AugmentConfig


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photo() -> bytes:
    y, x = np.mgrid[0:120, 0:90]
    return _jpeg(np.stack([x * 2, y * 2, (x + y)], -1).astype(np.uint8))


def test_shape_dtype_determinism(photo):
    aug = AugmentConfig(color_jitter=0.4)
    a = augment_image(photo, 32, aug, seed=5)
    assert a.shape == (3, 32, 32) and a.dtype == np.float32
    assert np.array_equal(a, augment_image(photo, 32, aug, seed=5))
    assert not np.array_equal(a, augment_image(photo, 32, aug, seed=6))


def test_crop_params_respect_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(500):
        top, left, h, w = crop_params(rng, 200, 150, (0.4, 1.0), (3 / 4, 4 / 3))
        assert 0 <= top <= 150 - h and 0 <= left <= 200 - w
        assert 0.38 <= h * w / (200 * 150) <= 1.0 and 0.7 <= w / h <= 1.4


def test_full_crop_equals_resize_and_normalises():
    flat = _jpeg(np.full((40, 40, 3), 128, dtype=np.uint8))
    aug = AugmentConfig(
        crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=0.0, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)
    )
    out = augment_image(flat, 16, aug, seed=0)
    assert np.allclose(out, (128 / 255 - 0.5) / 0.25, atol=0.03)


def test_hflip_mirrors(photo):
    base = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(0.75, 0.75))
    plain = augment_image(photo, 24, base.model_copy(update={"hflip": 0.0}), seed=1)
    flipped = augment_image(photo, 24, base.model_copy(update={"hflip": 1.0}), seed=1)
    assert np.allclose(plain[:, :, ::-1], flipped)


def test_large_jpeg_draft_decode_matches_full_decode():
    y, x = np.mgrid[0:800, 0:800]
    big = _jpeg(np.stack([x % 256, y % 256, (x // 4) % 256], -1).astype(np.uint8))
    aug = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=0.0)
    out = augment_image(big, 64, aug, seed=0)
    ref = (
        np.asarray(
            Image.open(io.BytesIO(big)).convert("RGB").resize((64, 64), Image.Resampling.BICUBIC), dtype=np.float32
        )
        / 255
    )
    ref = ((ref - np.array(aug.mean)) / np.array(aug.std)).transpose(2, 0, 1)
    assert np.abs(out - ref).mean() < 0.1


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\xff\xd8\xff\xe0" + b"\0" * 40])
def test_corrupt_bytes_raise(data):
    with pytest.raises(Exception):  # noqa: B017 - any decoder error: the pipeline counts them all as corrupt
        augment_image(data, 16, AugmentConfig(), seed=0)


def test_truncated_jpeg_raises(photo):
    with pytest.raises(OSError):
        augment_image(photo[: len(photo) // 2], 16, AugmentConfig(), seed=0)


def test_eval_image_is_deterministic_centre_crop(photo):
    a = eval_image(photo, 20)
    assert a.shape == (3, 20, 20) and np.array_equal(a, eval_image(photo, 20))


def _reference(data: bytes, size: int, aug: AugmentConfig) -> np.ndarray:
    ref = (
        np.asarray(
            Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32
        )
        / 255
    )
    return ((ref - np.array(aug.mean)) / np.array(aug.std)).transpose(2, 0, 1)


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_mid_size_jpeg_torchvision_path_matches_pil(mode):
    """160 px -> 128 px: no reduced JPEG scale fits, so torchvision decodes and resizes; the result matches a
    PIL decode + resize up to resampling rounding, for RGB, greyscale and CMYK JPEGs."""
    y, x = np.mgrid[0:160, 0:160]
    rgb = np.stack([x, y, (x + y) // 2], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(buf, format="JPEG", quality=95)
    aug = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), hflip=0.0)
    out = augment_image(buf.getvalue(), 128, aug, seed=0)
    assert out.shape == (3, 128, 128)
    assert np.abs(out - _reference(buf.getvalue(), 128, aug)).max() < 0.1


def test_mid_size_truncated_jpeg_raises_oserror():
    y, x = np.mgrid[0:160, 0:160]
    data = _jpeg(np.stack([x, y, x], -1).astype(np.uint8))
    with pytest.raises(OSError):
        augment_image(data[: len(data) // 2], 128, AugmentConfig(), seed=0)
