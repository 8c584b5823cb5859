"""Each pair's views are the views its targets describe: stored images are the renders of their
stored latents, and a pair's pixels, view indices, latents and targets belong together (plain path and
Ray Data path). A pair whose targets do not belong to its views would make rotation unlearnable."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from rayeq.config import load_config
from rayeq.data.feed.augment import resize
from rayeq.data.feed.pairs import ObjectPairs, _to_chw
from rayeq.data.feed.targets import relative_color, relative_rotation_quaternion
from rayeq.data.schema import decode_image


def _rows(path):
    return pq.read_table(sorted(path.glob("shard-*.parquet"))).to_pylist()


def _cfg(path, size=32):
    return load_config(None, [f"data.path={path}", f"data.image_size={size}", "data.num_actors=1",
                              "data.rows_per_batch=4"])  # fmt: skip


def test_stored_views_are_the_renders_of_their_latents(tiny_synth3d):
    """Re-render each object from its seed: image i is the render of latent i, byte for byte."""
    from rayeq.data.make.objects import make_renderer, render_chunk

    meta = __import__("json").loads((tiny_synth3d / "meta.json").read_text())
    per_class, classes = meta["objects_per_class"], meta["classes"]
    seqs = np.random.SeedSequence(meta["seed"]).spawn(len(classes) * per_class)
    renderer = make_renderer(meta["renderer"], meta["image_size"], meta["render_device"])
    for row in _rows(tiny_synth3d)[:6]:
        cls, index = row["object_id"].rsplit("_", 1)
        k = classes.index(cls) * per_class + int(index)
        (again,) = render_chunk(renderer, [(row["label"], cls, seqs[k], meta["views_per_object"])])
        np.testing.assert_allclose(np.array(again["latents"]), np.array(row["latents"]))
        for stored, rendered in zip(row["images"], again["images"], strict=True):
            np.testing.assert_array_equal(decode_image(stored), decode_image(rendered))
        # and the views differ: each latent gives its own picture
        assert not np.array_equal(decode_image(row["images"][0]), decode_image(row["images"][1]))


def _check_pair(row_images, row_latents, view1, view2, latent1, latent2, rel_rotation, rel_color, i, j, size):
    np.testing.assert_array_equal(view1, resize(_to_chw(decode_image(row_images[i])), size).numpy())
    np.testing.assert_array_equal(view2, resize(_to_chw(decode_image(row_images[j])), size).numpy())
    np.testing.assert_array_equal(latent1, np.asarray(row_latents[i], np.float32))
    np.testing.assert_array_equal(latent2, np.asarray(row_latents[j], np.float32))
    want_q = relative_rotation_quaternion(latent1[None, :3], latent2[None, :3])[0]
    np.testing.assert_allclose(rel_rotation, want_q, atol=1e-6)
    np.testing.assert_allclose(rel_color, relative_color(latent1[None], latent2[None])[0], atol=1e-6)


@pytest.mark.parametrize("size", [32, 16])
def test_each_pair_holds_its_views_pixels_latents_and_targets(tiny_synth3d, size):
    table = pq.read_table(sorted(tiny_synth3d.glob("shard-*.parquet")))
    rows = table.to_pylist()
    out = ObjectPairs(_cfg(tiny_synth3d, size), split=None, seed=5)(table)
    assert len(out["label"]) == len(rows)
    for k, row in enumerate(rows):  # one pair per stored row, in row order
        i, j = out["view_index"][k]
        assert i != j and out["label"][k] == row["label"]
        _check_pair(row["images"], row["latents"], out["view1"][k], out["view2"][k], out["latent1"][k],
                    out["latent2"][k], out["rel_rotation"][k], out["rel_color"][k], i, j, size)  # fmt: skip


def test_ray_data_pairs_hold_their_views_pixels_latents_and_targets(ray_session, tiny_synth3d):
    """The training path: every streamed pair's pixels are the stored views its latents belong to."""
    from rayeq.data.feed.pipeline import build_ray_dataset

    by_latent = {}
    for row in _rows(tiny_synth3d):
        for v, lat in enumerate(row["latents"]):
            by_latent[np.asarray(lat, np.float32).tobytes()] = (row, v)
    seen = 0
    for b in build_ray_dataset(_cfg(tiny_synth3d), "train").iter_batches(batch_size=4, batch_format="numpy"):
        for k in range(len(b["label"])):
            row, i = by_latent[b["latent1"][k].tobytes()]
            row2, j = by_latent[b["latent2"][k].tobytes()]
            assert row2 is row and (i, j) == tuple(b["view_index"][k]) and b["label"][k] == row["label"]
            _check_pair(row["images"], row["latents"], b["view1"][k], b["view2"][k], b["latent1"][k],
                        b["latent2"][k], b["rel_rotation"][k], b["rel_color"][k], i, j, 32)  # fmt: skip
            seen += 1
    assert seen == 16


# ----------------------------------------------------------------------------- the decoded copy
@pytest.mark.parametrize("size", [32, 16])
def test_pairs_from_the_decoded_copy_hold_the_stored_views_pixels(tiny_synth3d, size):
    """A decoded copy (views stored raw at the training size) gives the same pixels as decoding and resizing
    the stored PNGs, for the views each pair names."""
    from rayeq.data.feed.pipeline import maker_kwargs
    from rayeq.data.make.decode import ensure_decoded
    from rayeq.data.schema import RAW_ENCODING, open_dataset

    copy = ensure_decoded(tiny_synth3d, size, log=lambda *a: None)
    meta, shards = open_dataset(copy)
    assert meta["image_encoding"] == RAW_ENCODING and meta["image_size"] == size
    stored = {r["object_id"]: r for r in _rows(tiny_synth3d)}
    table = pq.read_table(shards)  # the copy groups rows by split: match them by object
    rows = [stored[o] for o in table.column("object_id").to_pylist()]
    cfg = _cfg(tiny_synth3d, size)
    out = ObjectPairs(**{**maker_kwargs(cfg, meta, None), "seed": 5})(table)
    assert len(out["label"]) == len(stored) == len(rows) and out["view1"].flags["C_CONTIGUOUS"]
    for k, row in enumerate(rows):
        i, j = out["view_index"][k]
        assert i != j and out["label"][k] == row["label"]
        _check_pair(row["images"], row["latents"], out["view1"][k], out["view2"][k], out["latent1"][k],
                    out["latent2"][k], out["rel_rotation"][k], out["rel_color"][k], i, j, size)  # fmt: skip
