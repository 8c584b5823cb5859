"""The hand-written mutations of issue 12, each applied in turn to a copy-free working tree (the file is
restored at once), with the tests that must kill it. Prints one line per mutation: killed by which test(s),
or SURVIVED. Exit status 1 if any survives.

    .venv/bin/python dev/listed_mutations.py            # all, Ray tests included (~10 min on 2 cores)
    .venv/bin/python dev/listed_mutations.py --no-ray   # only the mutations the fast core tests kill

mutmut (`mutmut run`, docs/TESTING.md) makes the generated mutants; these are the plausible bugs named in the
issue, some outside the mutated modules (the training engine, the online probes).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (what, file, text, replacement, tests that must fail, needs Ray)
MUTATIONS = [
    ("SIE predictor fed ones_like(q)", "rayeq/methods/sie.py", "self.predictor(equi1, q)",
     "self.predictor(equi1, torch.ones_like(q))",
     ["tests/test_methods.py::test_sie_terms_are_computed_on_the_right_parts_and_the_pairs_rotation"], False),
    ("online inv probe reads the equivariant channels", "rayeq/train/probes.py",
     "split_features(both, self.inv_dim)[0]", "split_features(both, self.inv_dim)[1]",
     ["tests/test_train_units.py::test_online_inv_probe_reads_the_invariant_channels"],
     False),
    ("pair maker swaps view1 and view2", "rayeq/data/feed/pairs.py", 'out["view1"].append(v1.numpy())\n            '
     'out["view2"].append(v2.numpy())', 'out["view1"].append(v2.numpy())\n            out["view2"].append(v1.numpy())',
     ["tests/test_pair_truth.py::test_each_pair_holds_its_views_pixels_latents_and_targets"], False),
    ("pair maker swaps the latents (targets of the reversed pair)", "rayeq/data/feed/pairs.py",
     'out["latent1"].append(np.asarray(row["latents"][i], np.float32))',
     'out["latent1"].append(np.asarray(row["latents"][j], np.float32))',
     ["tests/test_pair_truth.py::test_each_pair_holds_its_views_pixels_latents_and_targets"], False),
    ("xrecon ignores method.target_view", "rayeq/methods/xrecon.py", "else (cfg.method.target_view,)", "else (1,)",
     ["tests/test_methods.py::test_xrecon_decodes_the_configured_blend_and_reconstructs_the_target_view"], False),
    ("xrecon ignores xattn.residual=false", "rayeq/methods/xrecon.py", "x.attn_dim, x.residual)", "x.attn_dim, True)",
     ["tests/test_methods.py::test_xrecon_decodes_the_configured_blend_and_reconstructs_the_target_view"], False),
    ("xrecon reads value=source.equi as source.inv", "rayeq/methods/xrecon.py",
     'return (target if view == "target" else source)[part]',
     'return (target if view == "target" else source)[part.replace("equi", "inv")]',
     ["tests/test_methods.py::test_xrecon_decodes_the_configured_blend_and_reconstructs_the_target_view"], False),
    ("apply_params ignores the rotation angle", "rayeq/data/feed/augment.py", "angle=float(p[5])", "angle=0.0",
     ["tests/test_targets_augment.py::test_recorded_parameters_reproduce_the_view",
      "tests/test_targets_augment.py::test_geometric_parameters_mean_what_they_say"], False),
    ("apply_params applies saturation for contrast", "rayeq/data/feed/augment.py",
     "out = TF.adjust_contrast(out, float(p[9]))", "out = TF.adjust_saturation(out, float(p[9]))",
     ["tests/test_targets_augment.py::test_photometric_parameters_mean_what_they_say"], False),
    ("eval swaps the inv and equi parts", "rayeq/models/backbone.py",
     'return {"inv": inv, "equi": equi}[name]', 'return {"inv": equi, "equi": inv}[name]',
     ["tests/test_eval.py::test_eval_reads_the_invariant_and_equivariant_channels_it_names"], False),
    ("SIE's batch-wide terms not gathered across ranks", "rayeq/methods/sie.py",
     "z1 = gather_with_grad(torch.cat([inv1, equi1], dim=1))", "z1 = torch.cat([inv1, equi1], dim=1)",
     ["tests/test_losses.py::test_losses_under_ddp_match_the_full_batch"], False),
    ("the cross-rank gather's backward hands every rank rank 0's gradient", "rayeq/losses/distributed.py",
     "return g[dist.get_rank()]", "return g[0]", ["tests/test_losses.py::test_losses_under_ddp_match_the_full_batch"],
     False),
    ("metric accumulators not summed across ranks", "rayeq/metrics.py", "            dist.all_reduce(t)\n",
     "            pass\n", ["tests/test_losses.py::test_losses_under_ddp_match_the_full_batch"], False),
    ("resume does not load the model", "rayeq/train/engine.py", '        self.module.load_state_dict(state["model"])\n',
     "", ["tests/test_engine.py::test_a_restored_engine_holds_the_saved_state_and_trains_on_identically",
          "tests/test_train_ray.py::test_second_run_resumes_from_the_saved_epoch"], True),
    ("resume does not load the optimiser", "rayeq/train/engine.py",
     '        self.optimizer.load_state_dict(state["optimizer"])\n', "",
     ["tests/test_engine.py::test_a_restored_engine_holds_the_saved_state_and_trains_on_identically",
      "tests/test_train_ray.py::test_second_run_resumes_from_the_saved_epoch"], True),
]  # fmt: skip


def run(only_fast: bool) -> int:
    survived = 0
    for what, rel, old, new, tests, needs_ray in MUTATIONS:
        if needs_ray and only_fast:
            continue
        path = ROOT / rel
        original = path.read_text()
        if original.count(old) != 1:
            print(f"CANNOT APPLY  {what}: {old!r} is not in {rel} exactly once (the code moved; update this list)")
            survived += 1
            continue
        try:
            path.write_text(original.replace(old, new))
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", *tests],
                                  cwd=ROOT, capture_output=True, text=True)  # fmt: skip
        finally:
            path.write_text(original)
        failed = sorted({line.split()[1].split("[")[0] for line in proc.stdout.splitlines()
                         if line.startswith("FAILED ")})  # fmt: skip
        if proc.returncode == 0 or not failed:
            survived += 1
            print(f"SURVIVED      {what}  ({rel})")
        else:
            print(f"killed        {what}  ({rel})  by {', '.join(t.split('::')[1] for t in failed)}")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(run("--no-ray" in sys.argv))
