"""JPEG decode + RandomResizedCrop: which decoder is fastest for a training view, per source size.

    python -m benchmarks.decode [--n 200] [--sizes 32,224,512,1024] [--repeats 5]

Inputs: CIFAR-10 test JPEGs from shared/data/cifar10 (32 px, as stored) and the same images upscaled
(bicubic) and re-encoded at JPEG q=90 to each size. Every variant turns the same bytes and the same crop box
(`augment.crop_params`, scale 0.4-1.0, per-image seed) into a float32 (3, S, S) normalised array,
S = min(224, source size), bicubic:

- `pil`: PIL decodes the full image, then resizes the box (the baseline);
- `pil_draft`: the pipeline before this benchmark: PIL's `draft` lets libjpeg decode at 1/2, 1/4 or 1/8
  scale when the crop still covers >= S pixels at that scale, then PIL resizes the box;
- `torchvision`: `torchvision.io.decode_jpeg` (always full size), crop, uint8 `resize(antialias=True)`;
- `pipeline`: what the pipeline runs now (`augment._load_crop`): PIL throughout up to 64x64 pixels; above,
  PIL `draft` where a reduced scale fits, else `decode_jpeg`; then the torchvision resize.

One thread (`torch.set_num_threads(1)`), variants timed round-robin, median of `--repeats` passes after a
warm-up pass; ratios are images/s against `pil` in the same run. `max_abs_diff_vs_pil` is the largest
per-pixel difference from the baseline's output (normalised units), over the first 20 images.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"


def _images(n: int, size: int) -> list[bytes]:
    import pyarrow.parquet as pq
    from PIL import Image

    raw = pq.read_table(CIFAR / "cifar10_test-00-of-01.parquet", columns=["image"]).slice(0, n)["image"].to_pylist()
    if size == 32:
        return raw
    out = []
    for data in raw:
        buf = io.BytesIO()
        Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.Resampling.BICUBIC).save(
            buf, format="JPEG", quality=90
        )
        out.append(buf.getvalue())
    return out


def _boxes(images: list[bytes]) -> list[tuple[int, int, int, int]]:
    """(left, top, right, bottom) per image, as the pipeline draws them."""
    from PIL import Image

    from pipelines.data.augment import crop_params

    boxes = []
    for i, data in enumerate(images):
        w, h = Image.open(io.BytesIO(data)).size
        top, left, ch, cw = crop_params(np.random.default_rng(i), w, h, (0.4, 1.0), (3 / 4, 4 / 3))
        boxes.append((left, top, left + cw, top + ch))
    return boxes


def _variants(size: int):
    from PIL import Image
    from torchvision.io import decode_jpeg
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import resize

    from pipelines.data.augment import _RESAMPLE, _load_crop, _normalise
    from pipelines.data.config import IMAGENET_MEAN, IMAGENET_STD

    bicubic = Image.Resampling.BICUBIC
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def finish(img) -> np.ndarray:
        return _normalise(np.asarray(img, dtype=np.float32) * np.float32(1 / 255), IMAGENET_MEAN, IMAGENET_STD)

    def pil(data: bytes, box) -> np.ndarray:
        return finish(Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), bicubic, box=box))

    def pil_draft(data: bytes, box) -> np.ndarray:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        x0, y0, x1, y1 = box
        img.draft("RGB", (-(-w * size // max(x1 - x0, 1)), -(-h * size // max(y1 - y0, 1))))
        sx, sy = img.size[0] / w, img.size[1] / h
        return finish(img.convert("RGB").resize((size, size), bicubic, box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy)))

    def pipeline(data: bytes, box) -> np.ndarray:
        out = _load_crop(Image.open(io.BytesIO(data)), data, box, size, _RESAMPLE["bicubic"])
        return finish(out)

    def tv(data: bytes, box) -> np.ndarray:
        Image.open(io.BytesIO(data)).size  # noqa: B018 - every real path reads the header (crop_params needs it)
        img = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))  # (3, H, W) uint8
        x0, y0, x1, y1 = box
        out = resize(img[:, y0:y1, x0:x1], [size, size], interpolation=InterpolationMode.BICUBIC, antialias=True)
        return ((out.float().div_(255) - mean) / std).numpy()  # resized in uint8, like PIL

    return {"pil": pil, "pil_draft": pil_draft, "torchvision": tv, "pipeline": pipeline}


def run(n: int, sizes: list[int], repeats: int) -> dict:
    torch.set_num_threads(1)
    results = []
    for src in sizes:
        images = _images(n, src)
        boxes = _boxes(images)
        out_size = min(224, src)
        fns = _variants(out_size)
        ref = [fns["pil"](d, b) for d, b in zip(images[:20], boxes[:20])]
        diff = {
            k: float(max(np.abs(f(d, b) - r).max() for d, b, r in zip(images[:20], boxes[:20], ref)))
            for k, f in fns.items()
        }
        times: dict[str, list[float]] = {k: [] for k in fns}
        for rep in range(repeats + 1):  # the first pass warms up
            for name, fn in fns.items():
                t0 = time.perf_counter()
                for data, box in zip(images, boxes):
                    fn(data, box)
                if rep:
                    times[name].append(time.perf_counter() - t0)
        ips = {k: n / statistics.median(v) for k, v in times.items()}
        results.append(
            {
                "source_px": src,
                "output_px": out_size,
                "n": n,
                "mean_jpeg_kb": round(sum(map(len, images)) / n / 1024, 1),
                "images_per_s": {k: round(v, 1) for k, v in ips.items()},
                "ratio_vs_pil": {k: round(v / ips["pil"], 2) for k, v in ips.items()},
                "max_abs_diff_vs_pil": {k: round(v, 3) for k, v in diff.items()},
                "fastest": max(ips, key=ips.get),
            }
        )
    return {
        "benchmark": "decode",
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "python": sys.version.split()[0],
        "threads": 1,
        "repeats": repeats,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "results": results,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="images per source size")
    ap.add_argument("--sizes", default="32,224,512,1024", help="source sizes in pixels, comma-separated")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    out = run(args.n, [int(s) for s in args.sizes.split(",")], args.repeats)
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
