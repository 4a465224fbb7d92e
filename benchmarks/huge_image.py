"""What a huge image costs to read: a 168-megapixel RGBA PNG (a poster, a scan) decoded for a 224 px model.

PNG has no reduced-size decoding, so every pixel is decoded once whatever the model needs; what mlic can
save is the copies after that. The script writes the image itself (12,960 x 12,960, RGBA, with transparent
regions), then decodes it in fresh processes three ways and prints wall seconds and peak RSS of each:

    naive       Image.open(...).convert("RGB"), then resize (what a hand-written loader does; alpha dropped)
    full        mlic's decode_image without a draft size: full-size EXIF turn and alpha compositing on white
    mlic        mlic's decode_image as training and prediction call it (draft size 2 x 224): box-reduced,
                alpha premultiplied, before the colour conversion

    .venv/bin/python benchmarks/huge_image.py             # about a minute, about 3 GB of memory at the peak
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 12_960  # 167.96 megapixels

READ = """
import resource, sys, time
from PIL import Image
way, path, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = time.perf_counter()
if way == "naive":
    Image.MAX_IMAGE_PIXELS = None
    image = Image.open(path).convert("RGB").resize((size, size))
else:
    from mlic.data.images import decode_image
    draft = (2 * size, 2 * size) if way == "mlic" else None
    image = decode_image(path, max_pixels=200_000_000, draft_size=draft).resize((size, size))
seconds = time.perf_counter() - start
print(seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, image.size)
"""


def make_poster(path: Path, side: int) -> None:
    """RGBA bands and blocks, a transparent quarter: compresses well, decodes like any real PNG."""
    rng = np.random.default_rng(0)
    pixels = np.zeros((side, side, 4), np.uint8)
    for band in range(0, side, 540):
        pixels[band : band + 540, :, :3] = rng.integers(0, 256, 3, dtype=np.uint8)
    pixels[..., 3] = 255
    pixels[: side // 2, : side // 2, 3] = 0  # a transparent region, composited on white when read
    Image.fromarray(pixels, "RGBA").save(path, compress_level=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=SIDE, help="image side in pixels (default 12960: 168 MP)")
    ap.add_argument("--size", type=int, default=224, help="model input size")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlic-huge-") as tmp:
        path = Path(tmp) / "poster.png"
        start = time.perf_counter()
        make_poster(path, args.side)
        megapixels = args.side**2 / 1e6
        print(f"{path.name}: {args.side}x{args.side} RGBA = {megapixels:.1f} MP, {path.stat().st_size / 1e6:.1f} MB "
              f"on disk, written in {time.perf_counter() - start:.0f} s; "
              f"decoded RGBA is {args.side**2 * 4 / 2**20:.0f} MiB")  # fmt: skip
        print(f"{'way':<8}{'seconds':>10}{'peak RSS MiB':>15}")
        for way in ("naive", "full", "mlic"):
            out = subprocess.run([sys.executable, "-c", READ, way, str(path), str(args.size)], capture_output=True,
                                 text=True, check=True).stdout.split()  # fmt: skip
            print(f"{way:<8}{float(out[0]):>10.2f}{float(out[1]):>15.0f}")


if __name__ == "__main__":
    main()
