import h5py
import numpy as np
import pytest

from sfmkit.errors import ConfigError, SfmkitError
from sfmkit.io.h5 import H5Reader, ItemWriter, decode_name, encode_name, list_items


@pytest.mark.parametrize("name", ["a.jpg", "dir/sub/b 1.png", "odd%2Fname.jpg", "x%y/z"])
def test_name_encoding_round_trips(name):
    key = encode_name(name)
    assert "/" not in key
    assert decode_name(key) == name


def test_items_round_trip_with_nested_datasets(tmp_path):
    path = tmp_path / "f.h5"
    kpts = np.random.default_rng(0).random((5, 2)).astype(np.float32)
    with ItemWriter(path, "features", '{"a": 1}') as w:
        w.write(
            ("dir/a.jpg",), {"keypoints": kpts, "coarse/descriptors": np.ones((3, 5), np.float16)}, {"x": 2}
        )
    with H5Reader(path) as r:
        assert r.items(1) == [("dir/a.jpg",)]
        np.testing.assert_array_equal(r.array(("dir/a.jpg",), "keypoints"), kpts)
        assert r.array(("dir/a.jpg",), "coarse/descriptors").dtype == np.float16
        assert r.attrs(("dir/a.jpg",))["x"] == 2


def test_pairs_round_trip(tmp_path):
    path = tmp_path / "m.h5"
    with ItemWriter(path, "matches", "{}", depth=2) as w:
        w.write(("a/1.jpg", "b.jpg"), {"matches0": np.array([1, -1], np.int32)})
        w.write(("a/1.jpg", "c.jpg"), {"matches0": np.array([-1, 0], np.int32)})
    assert sorted(list_items(path, 2)) == [("a/1.jpg", "b.jpg"), ("a/1.jpg", "c.jpg")]


def test_incomplete_items_are_removed_on_reopen(tmp_path):
    path = tmp_path / "f.h5"
    with ItemWriter(path, "features", "{}") as w:
        w.write(("done.jpg",), {"keypoints": np.zeros((1, 2))})
    with h5py.File(path, "a") as f:  # simulate a write cut short: no `complete` attribute
        f.create_group("half.jpg").create_dataset("keypoints", data=np.zeros((1, 2)))
    w = ItemWriter(path, "features", "{}")
    assert w.done == {("done.jpg",)}
    with h5py.File(path, "r") as f:
        assert "half.jpg" not in f


def test_other_config_is_refused_unless_overwrite(tmp_path):
    path = tmp_path / "f.h5"
    with ItemWriter(path, "features", '{"max_size": 1024}') as w:
        w.write(("a.jpg",), {"keypoints": np.zeros((1, 2))})
    with pytest.raises(ConfigError, match="another configuration"):
        ItemWriter(path, "features", '{"max_size": 1600}')
    with pytest.raises(ConfigError, match="not an sfmkit matches file"):
        ItemWriter(path, "matches", '{"max_size": 1024}')
    w = ItemWriter(path, "features", '{"max_size": 1600}', overwrite=True)
    assert w.done == set()


def test_corrupt_file_is_moved_aside(tmp_path):
    path = tmp_path / "f.h5"
    path.write_bytes(b"not hdf5 at all")
    w = ItemWriter(path, "features", "{}")
    assert w.done == set()
    assert list(tmp_path.glob("f.h5.corrupt-*"))


def test_unwritable_output_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SfmkitError, match="cannot create output folder"):
        ItemWriter(blocker / "out" / "f.h5", "features", "{}")


def test_reader_errors_are_clear(tmp_path):
    with pytest.raises(SfmkitError, match="does not exist"):
        with H5Reader(tmp_path / "nope.h5"):
            pass
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"garbage")
    with pytest.raises(SfmkitError, match="not a readable HDF5 file"):
        with H5Reader(bad):
            pass
    path = tmp_path / "m.h5"
    with ItemWriter(path, "matches", "{}", depth=2):
        pass
    with pytest.raises(SfmkitError, match="not an sfmkit features file"):
        with H5Reader(path, "features"):
            pass


def test_items_from_other_inputs_are_not_reused(tmp_path):
    path = tmp_path / "f.h5"
    with ItemWriter(path, "features", "{}", identity={"image_dir": "/data/a"}) as w:
        w.write(("x.jpg",), {"keypoints": np.zeros((1, 2))})
    assert ItemWriter(path, "features", "{}", identity={"image_dir": "/data/a"}).done == {("x.jpg",)}
    with pytest.raises(ConfigError, match="another image dir"):
        ItemWriter(path, "features", "{}", identity={"image_dir": "/data/b"})


def test_pair_lookup_in_either_order(tmp_path):
    path = tmp_path / "m.h5"
    with ItemWriter(path, "matches", "{}", depth=2) as w:
        w.write(("a", "b"), {"x": np.zeros(1)})
        assert w.pending([("a", "b"), ("b", "a"), ("a", "c")]) == [("a", "c")]
    with H5Reader(path) as r:
        assert r.pair_key(("a", "b")) == (("a", "b"), False)
        assert r.pair_key(("b", "a")) == (("a", "b"), True)
        with pytest.raises(SfmkitError):
            r.pair_key(("a", "c"))


def _items(path, n=30):
    rng = np.random.default_rng(0)
    with ItemWriter(path, "features", "{}") as w:
        for i in range(n):
            w.write((f"{i:03d}.jpg",), {"keypoints": rng.random((200, 2)).astype(np.float32)})


def _damage(path, at):
    data = bytearray(path.read_bytes())
    start = int(len(data) * at)
    data[start : start + 2048] = np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("at", [0.05, 0.3, 0.6, 0.95])
def test_damage_anywhere_is_found_and_only_readable_items_are_kept(tmp_path, at):
    """Random bytes at any place: reopening never crashes, and every item a reader accepts
    reads whole; the others are recomputed (noted, or dropped from the salvaged file)."""
    from sfmkit.errors import DamagedFileError

    path = tmp_path / "f.h5"
    _items(path)
    _damage(path, at)
    writer = ItemWriter(path, "features", "{}")
    bad = set()
    with H5Reader(path) as r:
        for key in sorted(writer.done):
            try:
                assert r.array(key, "keypoints").shape == (200, 2)
            except DamagedFileError:
                bad.add(key)
    again = ItemWriter(path, "features", "{}")  # drops what the reader found damaged
    assert not bad & again.done
    assert len(again.done) >= 20  # 2 KiB of damage costs a few items, not the file


def test_a_missing_dataset_is_not_damage(tmp_path):
    path = tmp_path / "f.h5"
    _items(path, 2)
    with H5Reader(path) as r, pytest.raises(KeyError):
        r.array(("000.jpg",), "descriptors")
    assert not (tmp_path / "f.h5.damaged").exists()
    assert ItemWriter(path, "features", "{}").done == {("000.jpg",), ("001.jpg",)}


def test_references_are_relative_inside_the_folder_and_absolute_outside(tmp_path):
    from sfmkit.io.h5 import file_reference, resolve_reference

    stage = tmp_path / "out" / "matches.h5"
    inside, outside = tmp_path / "out" / "features.h5", tmp_path / "elsewhere" / "features.h5"
    assert file_reference(inside, stage) == "features.h5"
    assert file_reference(outside, stage) == str(outside.resolve())
    assert (
        resolve_reference("features.h5", tmp_path / "moved" / "matches.h5")
        == (tmp_path / "moved" / "features.h5").resolve()
    )
