"""Decode + augment one image (PIL + numpy): RandomResizedCrop, flip, optional colour jitter, normalise.

The crop follows torchvision's `RandomResizedCrop.get_params`; randomness comes from a per-sample seed,
so a sample gets the same crop wherever it is decoded. Decoding takes the fastest path measured by
`benchmarks/decode.py`: a JPEG whose crop still covers at least `size` pixels at a reduced DCT scale is
decoded at that scale by PIL (`draft`); any other JPEG by torchvision's `decode_jpeg` (PIL's decoder is the
fallback, and names what is wrong with a corrupt file); other formats by PIL. The crop is resized by
torchvision in uint8 (antialiased), about 3x faster than PIL's box resize. Images of at most 64x64 pixels
(CIFAR) stay on PIL throughout: there torch's per-call overhead costs more than it saves.
Output: float32 (3, size, size), mean/std normalised.
"""

from __future__ import annotations

import functools
import io
import math
import warnings

import numpy as np
from PIL import Image

from pipelines.data.config import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig

__all__ = ["crop_params", "augment_image", "eval_image", "decode"]

_RESAMPLE = {"bicubic": (Image.Resampling.BICUBIC, "BICUBIC"), "bilinear": (Image.Resampling.BILINEAR, "BILINEAR")}
SMALL_PIXELS = 64 * 64  # sources up to this size: PIL throughout is as fast or faster (benchmarks/decode.py)


def crop_params(
    rng: np.random.Generator, width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop: area fraction in `scale`, aspect (w/h) in `ratio`."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def decode(data: bytes) -> Image.Image:
    """Open (header only); raises on bytes that are not an image."""
    if not data:
        raise ValueError("empty image")
    return Image.open(io.BytesIO(data))


@functools.cache
def _torch_ops():
    """(torch, resize, InterpolationMode, decode_jpeg or None, ImageReadMode), imported on first use: importing
    torchvision costs ~1.8 s per process, which CIFAR-sized images (PIL only) never need to pay."""
    import torch
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import resize

    try:  # deprecated since torchvision 0.29 (TorchCodec replaces it), warns on every call; PIL covers its absence
        from torchvision.io import ImageReadMode, decode_jpeg

        warnings.filterwarnings(
            "ignore", message="The image decoding and encoding capabilities of TorchVision", category=DeprecationWarning
        )
    except ImportError:  # pragma: no cover - a torchvision without the image ops
        decode_jpeg = ImageReadMode = None
    return torch, resize, InterpolationMode, decode_jpeg, ImageReadMode


def _load_crop(img: Image.Image, data: bytes, box: tuple[int, int, int, int], size: int, resample: tuple) -> np.ndarray:
    """Decode `img` (its bytes: `data`) and resize the crop `box` (full-resolution pixels) to (size, size, 3) uint8."""
    width, height = img.size
    x0, y0, x1, y1 = box
    pil_mode, torch_mode = resample
    if width * height <= SMALL_PIXELS:  # tiny images (CIFAR): torch's per-call overhead outweighs its speed
        return np.asarray(img.convert("RGB").resize((size, size), resample=pil_mode, box=box))
    torch, resize, modes, decode_jpeg, read_mode = _torch_ops()
    chw = None
    if img.format == "JPEG":
        img.draft("RGB", (math.ceil(width * size / max(x1 - x0, 1)), math.ceil(height * size / max(y1 - y0, 1))))
        if img.size == (width, height) and decode_jpeg is not None:  # no reduced scale fits: torchvision's is faster
            try:
                chw = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=read_mode.RGB)
            except RuntimeError:
                pass  # PIL below decodes it, or raises a clear error for a corrupt file
    if chw is None:
        chw = torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
    sx, sy = chw.shape[2] / width, chw.shape[1] / height
    left, top = min(round(x0 * sx), chw.shape[2] - 1), min(round(y0 * sy), chw.shape[1] - 1)
    right, bottom = max(round(x1 * sx), left + 1), max(round(y1 * sy), top + 1)
    out = resize(chw[:, top:bottom, left:right], [size, size], interpolation=modes[torch_mode], antialias=True)
    return out.permute(1, 2, 0).numpy()


def _normalise(arr: np.ndarray, mean, std) -> np.ndarray:
    """(H, W, 3) float in [0, 1] -> (3, H, W) float32 normalised."""
    out = (arr - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32)


def _jitter(arr: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Brightness, contrast, saturation factors in [1 - s, 1 + s], applied in a random order."""
    gray_w = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    for op in rng.permutation(3):
        f = np.float32(rng.uniform(1 - strength, 1 + strength))
        if op == 0:
            arr = arr * f
        elif op == 1:
            arr = (arr - (arr @ gray_w).mean()) * f + (arr @ gray_w).mean()
        else:
            gray = (arr @ gray_w)[..., None]
            arr = gray + (arr - gray) * f
        arr = np.clip(arr, 0.0, 1.0)
    return arr


def augment_image(data: bytes, size: int, aug: AugmentConfig, seed: int) -> np.ndarray:
    """Training view of one encoded image: float32 (3, size, size). Raises if undecodable."""
    rng = np.random.default_rng(seed)
    img = decode(data)
    top, left, h, w = crop_params(rng, img.size[0], img.size[1], aug.crop_scale, aug.crop_ratio)
    out = _load_crop(img, data, (left, top, left + w, top + h), size, _RESAMPLE[aug.interpolation])
    arr = out.astype(np.float32) * np.float32(1 / 255)
    if aug.hflip and rng.random() < aug.hflip:
        arr = arr[:, ::-1]
    if aug.color_jitter > 0:
        arr = _jitter(arr, rng, aug.color_jitter)
    return _normalise(arr, aug.mean, aug.std)


def eval_image(
    data: bytes, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation: str = "bicubic"
) -> np.ndarray:
    """Deterministic view (probes): centre square crop resized to size, normalised. (3, size, size)."""
    img = decode(data)
    width, height = img.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    out = _load_crop(img, data, (left, top, left + side, top + side), size, _RESAMPLE[interpolation])
    return _normalise(out.astype(np.float32) * np.float32(1 / 255), mean, std)
