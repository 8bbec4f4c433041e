"""The Ray executor (``--executor ray``) of extract, global descriptors, match and verify: the same
stage files as the local executor, even when a worker dies mid-run."""

from __future__ import annotations

import importlib.util

import h5py
import numpy as np
import pytest

from sfmkit.errors import ConfigError
from sfmkit.features import get_conf
from sfmkit.features.extract import KILL_ONCE_ENV, extract, extract_global
from sfmkit.features.global_descriptors import GlobalConf
from sfmkit.geometry.verify import CONFS as VERIFY_CONFS
from sfmkit.geometry.verify import verify
from sfmkit.io.pairs import exhaustive_pairs, write_pairs
from sfmkit.matching.match import CONFS as MATCH_CONFS
from sfmkit.matching.match import match
from sfmkit.utils.config import replace
from sfmkit.utils.executor import ExecutorConf


def _contents(path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
        )
    return out


@pytest.mark.slow
def test_ray_stages_equal_local_after_a_killed_worker(rendered_scene, tmp_path, monkeypatch):
    """Extract, match, verify and extract global descriptors of five rendered views on a local Ray
    instance (two-item tasks); the first task of each extraction (local features, global
    descriptors) kills its worker before its second image. Ray retries the
    task, the task resumes its shard, and each merged file holds exactly the local executor's
    datasets; no shard is left behind."""
    ray = pytest.importorskip("ray")
    scene_dir, _ = rendered_scene
    images = scene_dir / "images"
    names = [f"{i:04d}.png" for i in range(5)]
    conf = replace(get_conf("dense-vgg16"), max_size=240)
    pairs = write_pairs(tmp_path / "pairs.txt", exhaustive_pairs(names))

    def stages(out, executor=None):
        kw = {} if executor is None else {"executor": executor}
        feats = extract(conf, images, out, image_names=names, device="cpu", **kw)
        matches = match(MATCH_CONFS["mnn-c2f"], feats, pairs, out, device="cpu", **kw)
        verified = verify(VERIFY_CONFS["multi-homography"], matches, pairs, out, **kw)
        global_file = extract_global(
            GlobalConf(max_size=240), images, out, image_names=names, device="cpu", **kw
        )
        return feats, matches, verified, global_file

    local = stages(tmp_path / "local")
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_ONCE_ENV, str(marker))
    try:
        distributed = stages(tmp_path / "ray", ExecutorConf(kind="ray", workers=2, chunk=2))
    finally:
        ray.shutdown()
    assert (tmp_path / "killed.features").exists() and (tmp_path / "killed.global").exists()  # workers died
    for a_path, b_path in zip(local, distributed, strict=True):
        a, b = _contents(a_path), _contents(b_path)
        assert len(a) >= 10 and a.keys() == b.keys(), a_path.name
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{a_path.name}: {name}")
    with h5py.File(distributed[0], "r") as f:
        assert '"executor": "ray"' in f.attrs["last_run"] and '"computed": 5' in f.attrs["last_run"]
    with h5py.File(distributed[2], "r") as f:
        assert sum(g.attrs["num_matches"] > 0 for g in _groups(f)) == 10
    assert not (tmp_path / "ray" / "shards").exists()


def _groups(f: h5py.File) -> list[h5py.Group]:
    """The pair groups (depth 2) of a matches or verified file."""
    return [
        g for a in f.values() if isinstance(a, h5py.Group) for g in a.values() if isinstance(g, h5py.Group)
    ]


def test_executor_options_are_checked(cli, image_folder, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unknown executor"):
        ExecutorConf(kind="dask")
    result = cli("extract", image_folder, "-o", tmp_path, "--workers", "2")
    assert result.exit_code == 2 and "--executor ray" in result.output
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a)
    )
    result = cli("extract", image_folder, "-o", tmp_path / "out", "--executor", "ray")
    assert result.exit_code == 2 and "sfmkit[ray]" in result.output, result.output
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.h5"))
