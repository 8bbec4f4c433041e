"""`sfmkit reconstruct` on a scene the test renders itself, scored against its exact cameras."""

import json
import shutil

import pycolmap
import pytest

from sfmkit.eval.poses import pose_errors
from sfmkit.io.poses import model_poses
from sfmkit.io.strecha import read_scene


def test_reconstruct_rendered_scene_registers_all_and_is_accurate(reconstructed_scene):
    scene_dir, scene, out, result = (
        reconstructed_scene.scene_dir,
        reconstructed_scene.scene,
        reconstructed_scene.out,
        reconstructed_scene.result,
    )
    assert result.exit_code == 0, result.output
    assert "images registered" in result.output

    final = out / "sfm-ba"  # the default's last step: the featuremetric bundle adjustment
    assert json.loads((out / "report.json").read_text())["reconstruct"]["outputs"]["model"] == str(final)
    rec = pycolmap.Reconstruction(final)
    assert rec.num_reg_images() == 8 and pycolmap.Reconstruction(out / "sfm").num_reg_images() == 8
    assert (final / "model.ply").stat().st_size > 1000
    truth = {name: cam.pose for name, cam in read_scene(scene_dir).items()}
    errors = pose_errors(truth, model_poses(rec))
    assert not errors.missing
    worst = max(errors.position.values())
    assert worst < 0.01 * scene.extent, f"camera centre error {worst:.4f} vs extent {scene.extent:.2f}"

    report = json.loads((out / "report.json").read_text())
    section = report["reconstruct"]
    assert section["reconstruction"]["registered"] == 8
    assert set(section["timings"]) >= {"extract", "match", "verify", "map", "total"}
    assert section["config"]["features"]["name"] == "dense-vgg16"


def test_a_run_stopped_in_a_stage_keeps_the_figures_of_the_stages_before(
    reconstructed_scene, tmp_path, monkeypatch
):
    """Each finished stage updates the report's ``reconstruct-progress`` section; the finished
    run's ``reconstruct`` section stays until a run finishes, which drops the progress."""
    import sfmkit.pipelines.reconstruct as pipeline
    from sfmkit.errors import SfmkitError

    out = tmp_path / "out"
    shutil.copytree(reconstructed_scene.out, out)  # every stage file there: the stages reuse them
    images = reconstructed_scene.scene_dir / "images"
    before = json.loads((out / "report.json").read_text())["reconstruct"]

    seen = {}

    def killed(*args, **kwargs):  # what a run killed here (no handler runs) would leave
        seen.update(json.loads((out / "report.json").read_text()))
        raise SfmkitError("stopped in map")

    monkeypatch.setattr(pipeline, "map_images", killed)
    with pytest.raises(SfmkitError, match="stopped in map"):
        pipeline.reconstruct(pipeline.ReconstructConf(), images, out)
    progress = seen[pipeline.PROGRESS_SECTION]
    assert progress["status"] == "running" and progress["last_stage"] == "refine"
    assert set(progress["timings"]) >= {"extract", "match", "verify", "refine"}
    assert progress["counts"]["refine"]["tracks"] > 0 and progress["peak_memory_mb"]["refine"] > 0
    report = json.loads((out / "report.json").read_text())
    stopped = report[pipeline.PROGRESS_SECTION]
    assert stopped["status"] == "stopped" and stopped["stopped_in"] == "map"
    assert "stopped in map" in stopped["error"]
    assert report["reconstruct"] == before
    monkeypatch.undo()
    pipeline.reconstruct(pipeline.ReconstructConf(), images, out)
    report = json.loads((out / "report.json").read_text())
    assert (
        pipeline.PROGRESS_SECTION not in report and report["reconstruct"]["reconstruction"]["registered"] == 8
    )


def test_stage_commands_chain_like_reconstruct(cli, rendered_scene, tmp_path):
    """Each stage command in turn; image names with spaces and sub-folders."""
    scene_dir, _ = rendered_scene
    folder = tmp_path / "my images"
    for i, src in enumerate(sorted((scene_dir / "images").glob("*.png"))):
        dst = folder / ("set A" if i < 4 else "set B") / f"view {i}.png"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dst)
    images = str(folder)
    out = tmp_path / "stages"
    r = cli("extract", images, "-o", str(out))
    assert r.exit_code == 0, r.output
    r = cli("match", str(out / "features-dense-vgg16.h5"), "--pairs", "sequential:3")
    assert r.exit_code == 0, r.output
    matches = out / "matches-dense-vgg16_mnn-c2f.h5"
    pairs = out / "pairs-sequential3.txt"
    r = cli("verify", str(matches), "--pairs", str(pairs), "--best-pairs", "3")
    assert r.exit_code == 0, r.output
    verified = next(out.glob("verified-*.h5"))
    r = cli(
        "map",
        images,
        str(verified),
        "--pairs",
        str(pairs),
        "-o",
        str(out / "sfm"),
        "--intrinsics",
        str(scene_dir / "images" / "K.txt"),
    )
    assert r.exit_code == 0, r.output
    rec = pycolmap.Reconstruction(out / "sfm")
    assert rec.num_reg_images() == 8
    assert {img.name for img in rec.images.values()} == {
        f"set {'A' if i < 4 else 'B'}/view {i}.png" for i in range(8)
    }
    cam = next(iter(rec.cameras.values()))
    assert cam.model_name == "PINHOLE" and abs(cam.params[0] - 480.0) < 1e-6  # fixed known K
    report = json.loads((out / "report.json").read_text())
    assert {"extract", "match", "verify"} <= set(report)


@pytest.mark.slow
def test_reconstruct_with_retrieval_pairs(cli, rendered_scene, tmp_path):
    """--pairs retrieval:K matches only each image's K nearest images and still registers all."""
    scene_dir, _ = rendered_scene
    out = tmp_path / "out"
    args = [
        "--no-progress",
        "reconstruct",
        str(scene_dir / "images"),
        "-o",
        str(out),
        "--pairs",
        "retrieval:3",
    ]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    pairs = (out / "pairs-retrieval-prmac-k3.txt").read_text().split("\n")
    assert 12 <= len([p for p in pairs if p]) < 28  # 8 images x 3 neighbours, each pair once; exhaustive: 28
    section = json.loads((out / "report.json").read_text())["reconstruct"]
    assert section["reconstruction"]["registered"] == 8
    assert "retrieve" in section["timings"] and section["counts"]["retrieve"]["pairs"] < 28
    bad = cli(*args[:-1], "retrieval:x")
    assert bad.exit_code == 2 and "retrieval:K" in bad.output


@pytest.mark.slow
def test_reconstruct_with_featuremetric_bundle_adjustment(cli, rendered_scene, tmp_path):
    """--refine keypoints+ba maps, then adjusts the model into sfm-ba/, which is the result."""
    scene_dir, scene = rendered_scene
    out = tmp_path / "out"
    args = [
        "reconstruct",
        scene_dir / "images",
        "-o",
        out,
        "--pairs",
        "sequential:3",
        "--refine",
        "keypoints+ba",
    ]
    result = cli(*args)
    assert result.exit_code == 0, result.output
    section = json.loads((out / "report.json").read_text())["reconstruct"]
    assert section["outputs"]["model"] == str(out / "sfm-ba")
    assert "bundle" in section["timings"] and section["counts"]["bundle"]["observations"] > 1000
    assert section["config"]["bundle"]["window"] == 11
    rec = pycolmap.Reconstruction(out / "sfm-ba")
    assert rec.num_reg_images() == 8 and (out / "sfm-ba" / "ba-run.json").is_file()
    errors = pose_errors({n: c.pose for n, c in read_scene(scene_dir).items()}, model_poses(rec))
    assert max(errors.position.values()) < 0.01 * scene.extent
    written = (out / "sfm-ba" / "ba-run.json").stat().st_mtime_ns
    again = cli(*args)  # everything reused, the adjustment included
    assert again.exit_code == 0, again.output
    assert (out / "sfm-ba" / "ba-run.json").stat().st_mtime_ns == written
