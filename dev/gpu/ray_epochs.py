"""The Ray path alone on a GPU node: steady, whole-epoch and whole-run images/s over 5 epochs (the check that all
epochs stream through one Ray Data execution) and the CPU of Ray Data's coordinators; writes $OUT/ray_epochs.json.
Usage (after dev/gpu/bench.sh's set-up lines): python dev/gpu/ray_epochs.py"""

import json
import os

from rayeq import bench

if __name__ == "__main__":
    flags = ["train.use_gpu=true", "train.precision=bf16", "train.channels_last=true", "data.num_actors=14",
             "data.cpus_per_actor=1.0", "model.stem=small", "model.projector=[2048,2048,2048]",
             "method.decoder.width=256", "train.steps_per_epoch=53"]  # fmt: skip
    cfg = bench.bench_config("xrecon", 64, 512, 1, flags)
    res = bench.ray_path(cfg, steps=53, epochs=5, val_steps=4, log=print)
    print(json.dumps(res, indent=1))
    with open(os.path.join(os.environ["OUT"], "ray_epochs.json"), "w") as f:
        json.dump(res, f, indent=2)
