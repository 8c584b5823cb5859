"""The PyTorch renderer on a lent GPU machine, which has torch, numpy, scipy and pillow but no pydantic, Ray or
pybullet: rayeq.data.make.raster needs none of them. Prints and writes (to $OUT/render.json) the renderer's images/s
on the GPU at 64 and 128 px (rendering only, 256 objects per call), the time a 3DIEBench-sized set (52,472 objects
x 50 views) would take at that rate, and the GPU's silhouettes against the CPU's on the same objects.

    python dev/gpu/render_bench.py [--device cuda] [--objects-per-class 16]
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from rayeq.data.make.parity import IEBENCH_IMAGES, compare, device_rate, parity_sample, timed_render  # noqa: E402
from rayeq.data.make.raster import TorchRenderer  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--objects-per-class", type=int, default=16)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--sizes", default="64,128")
    ap.add_argument("--chunk", type=int, default=256)
    args = ap.parse_args()
    objects, latents = parity_sample(args.objects_per_class, args.views, seed=1)
    n = latents.shape[0] * latents.shape[1]
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    res = {"device": name, "images": n, "sizes": {}}
    for size in map(int, args.sizes.split(",")):
        ips, img, sil = device_rate(objects, latents, size, args.device, args.chunk)
        row = {"images_per_s": ips, "iebench_minutes": IEBENCH_IMAGES / ips / 60}
        if args.device.startswith("cuda"):
            row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            k = min(len(objects), 46)
            cpu, cpu_sil, _ = timed_render(TorchRenderer(size), objects[:k], latents[:k])
            row["gpu_vs_cpu"] = compare(cpu, cpu_sil, img[:k], sil[:k])
        res["sizes"][str(size)] = row
        print(
            f"{size:3d} px on {name}: {row['images_per_s']:.0f} images/s; 3DIEBench-sized set "
            f"({IEBENCH_IMAGES:,} images) in {row['iebench_minutes']:.1f} min (rendering only)",
            flush=True,
        )
        if "gpu_vs_cpu" in row:
            print(f"        GPU vs CPU: {row['gpu_vs_cpu']}", flush=True)
    out = Path(os.environ.get("OUT", "."))
    out.mkdir(parents=True, exist_ok=True)
    (out / "render.json").write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
