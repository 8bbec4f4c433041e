"""The Ray executor of ``extract`` (``--executor ray``): the same feature file as the local one,
even when a worker dies mid-run."""

from __future__ import annotations

import importlib.util

import h5py
import numpy as np
import pytest

from sfmkit.errors import ConfigError
from sfmkit.features import get_conf
from sfmkit.features.extract import KILL_ONCE_ENV, extract
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
def test_ray_extraction_equals_local_after_a_killed_worker(image_folder, tmp_path, monkeypatch):
    """Four images in two-image Ray tasks on a local Ray instance; the first task's worker kills
    itself before its second image. Ray retries the task, the task resumes its shard, and the
    merged file holds exactly the local executor's datasets; no shard is left behind."""
    ray = pytest.importorskip("ray")
    conf = replace(get_conf("dense-vgg16"), max_size=160)
    local = extract(conf, image_folder, tmp_path / "local", device="cpu")
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_ONCE_ENV, str(marker))
    try:
        distributed = extract(
            conf,
            image_folder,
            tmp_path / "ray",
            device="cpu",
            executor=ExecutorConf(kind="ray", workers=2, chunk=2),
        )
    finally:
        ray.shutdown()
    assert marker.exists()  # a worker did die
    a, b = _contents(local), _contents(distributed)
    assert len(a) > 20 and a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    with h5py.File(distributed, "r") as f:
        assert '"executor": "ray"' in f.attrs["last_run"] and '"computed": 4' in f.attrs["last_run"]
    assert not (tmp_path / "ray" / "shards").exists()


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
