"""The Ray Data pair pipeline alone on a GPU node (14 actors, decoded 64 px views) and the per-core
pair rate there; writes $OUT/data.json. Usage: python dev/gpu/data_rate.py"""

import json
import os

from rayeq import bench

if __name__ == "__main__":  # the decoded copy is made by spawned processes, which re-import this file
    cfg = bench.bench_config("xrecon", 64, 512, 1, ["data.num_actors=14", "data.cpus_per_actor=1.0"])
    core = bench.pairs_per_core(cfg, 5)
    rate, first = bench.ray_data_rate(cfg, 512)
    res = {"ray_data_pairs_per_sec": rate, "first_pass": first, "actors": 14, "pairs_per_s_per_core_decoded_64": core}
    print(res)
    with open(os.path.join(os.environ["OUT"], "data.json"), "w") as f:
        json.dump(res, f, indent=2)
