"""lowrank-nerf: --help of every subcommand, bad input -> one line + exit 2, and a tiny run of every command."""

import json

import numpy as np
import pytest
import torch

from lowrank_vision.apps.nerf import main

torch.set_num_threads(1)
COMMANDS = ["make-scene", "train", "distill", "eval", "render", "export"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_of_every_subcommand(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0 and "--out" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["eval", "--checkpoint", "nope.safetensors"], "checkpoint nope.safetensors does not exist"),
    (["export", "--checkpoint", "nope.safetensors"], "checkpoint nope.safetensors does not exist"),
    (["train", "--data", "no_such_dir", "--steps", "1"], "--data: no_such_dir does not exist"),
    (["distill", "--teacher", "nope.safetensors", "--steps", "1"], "checkpoint nope.safetensors does not exist"),
    (["distill", "--teacher-cache", "-1", "--steps", "1"], "DistillConfig.teacher_cache_batches must be an int >= 0, got -1"),
    (["distill", "--coarse-every", "0", "--steps", "1"], "DistillConfig.coarse_every must be an int >= 1, got 0"),
])
def test_missing_input_is_one_line_and_exit_2(argv, needle, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0] and err[0].startswith(f"lowrank-nerf {argv[0]}: error:")
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    assert main(["render", "--checkpoint", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "not a readable .safetensors checkpoint" in capsys.readouterr().err


def _read_ply_count(path):
    head = path.read_bytes().split(b"end_header\n")[0].decode()
    return int(next(line.split()[-1] for line in head.splitlines() if line.startswith("element vertex")))


def test_every_command_on_a_tiny_scene(tmp_path, capsys):
    scene = tmp_path / "scene"
    assert main(["make-scene", "--width", "16", "--views", "4", "--out", str(scene)]) == 0
    assert (scene / "transforms.json").is_file() and (scene / "transforms_train.json").is_file()
    capsys.readouterr()
    assert main(["train", "--data", str(scene), "--field", "grid", "--steps", "3", "--rays", "64", "--out", str(tmp_path / "t")]) == 0
    res = json.loads(capsys.readouterr().out)
    ckpt = tmp_path / "t" / "grid.safetensors"
    assert res["checkpoint"] == str(ckpt) and ckpt.is_file() and res["steps"] == 3 and 0 < res["test_psnr"] < 60
    assert main(["distill", "--teacher", str(ckpt), "--student", "mlp", "--steps", "4", "--rays", "64", "--data", str(scene),
                 "--teacher-cache", "1", "--coarse-every", "4", "--out", str(tmp_path / "d")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert json.loads((tmp_path / "d" / "metrics.json").read_text())["config"]["coarse_every"] == 4
    assert res["stage1_skipped"] is True and res["steps"] == 4 and (tmp_path / "d" / "mlp_from_grid.safetensors").is_file()
    assert res["teacher_renders"] == 1  # one buffer of one step's rays, used 4 times
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(scene), "--out", str(tmp_path / "e")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_images"] == 8 and (tmp_path / "e" / "eval_test.png").is_file()
    assert main(["render", "--checkpoint", str(ckpt), "--frames", "2", "--out", str(tmp_path / "r")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(list((tmp_path / "r" / "frames").glob("*.png"))) == 2 and res["video_format"] in ("mp4", "gif")
    assert (tmp_path / "r" / f"orbit.{res['video_format']}").stat().st_size > 0
    # the grid starts at sigma_pre = -1 (density 0.37): a threshold of 0.1 keeps every grid point
    assert main(["export", "--checkpoint", str(ckpt), "--resolution", "8", "--threshold", "0.1", "--out", str(tmp_path / "x")]) == 0
    res = json.loads(capsys.readouterr().out)
    ply = tmp_path / "x" / "grid_points.ply"
    assert res["points"] == _read_ply_count(ply) and res["points"] > 0
    body = np.frombuffer(ply.read_bytes().split(b"end_header\n", 1)[1], dtype=[("p", "<f4", 3), ("c", "u1", 3)])
    assert body.shape[0] == res["points"] and np.abs(body["p"]).max() <= 1.0 + 1e-6
    from lowrank_vision.plugins._open3d import import_open3d

    o3d = import_open3d()
    assert len(o3d.io.read_point_cloud(str(ply)).points) == res["points"]


def _ball_checkpoint(path):
    """A 24^3 dense grid holding a ball of radius 0.6 (sigma_pre = 6 on the sphere), seen by a 16-px rig."""
    from lowrank_vision.plugins.nerf_pvd.config import FieldConfig
    from lowrank_vision.plugins.nerf_pvd.fields import DenseSHGridField
    from lowrank_vision.plugins.nerf_pvd.model import CameraRig, save_field

    field = DenseSHGridField(resolution=24, sh_degree=0)
    ax = torch.linspace(-1, 1, 24)
    z, y, x = torch.meshgrid(ax, ax, ax, indexing="ij")  # grid_sample: the last volume dim is x
    with torch.no_grad():
        field.density.copy_((6.0 - 20.0 * ((x ** 2 + y ** 2 + z ** 2).sqrt() - 0.6))[None, None])
    return save_field(path, field, FieldConfig(kind="grid", grid_resolution=24, grid_sh_degree=0),
                      CameraRig(16, 16, (20.0, 20.0, 8.0, 8.0), (3.0, 3.0), (10.0, 60.0), (0.0, 0.0, 0.0)))


def test_export_mesh_of_a_ball_is_read_back_by_open3d(tmp_path, capsys):
    """The --mesh iso-surface of the ball lies on its sphere and open3d reads it back with the stated counts."""
    from lowrank_vision.plugins._open3d import import_open3d

    ckpt = _ball_checkpoint(tmp_path / "ball.safetensors")
    thr = float(np.exp(6.0))
    assert main(["export", "--checkpoint", str(ckpt), "--mesh", "--resolution", "32", "--threshold", str(thr),
                 "--out", str(tmp_path / "m")]) == 0
    res = json.loads(capsys.readouterr().out)
    mesh = import_open3d().io.read_triangle_mesh(res["ply"])
    v = np.asarray(mesh.vertices)
    assert res["kind"] == "mesh" and len(v) == res["vertices"] > 100 and len(mesh.triangles) == res["faces"] > 100
    r = np.linalg.norm(v, axis=1)
    assert abs(r.mean() - 0.6) < 0.02 and r.std() < 0.02  # on the sphere, within a fraction of a grid step
    assert mesh.has_vertex_colors()
    # a threshold the density never crosses: one clear line, exit 2, no file
    assert main(["export", "--checkpoint", str(ckpt), "--mesh", "--threshold", "1e30", "--out", str(tmp_path / "n")]) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip() and "density grid" not in line]  # the progress bar
    assert len(err) == 1 and "never crosses it" in err[0] and not (tmp_path / "n").exists()


def test_render_writes_an_mp4_with_every_frame_when_imageio_ffmpeg_is_there(tmp_path, capsys):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    ckpt = _ball_checkpoint(tmp_path / "ball.safetensors")
    assert main(["render", "--checkpoint", str(ckpt), "--frames", "3", "--size", "24", "--elevation", "20",
                 "--out", str(tmp_path / "r")]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["video_format"] == "mp4" and res["video"].endswith("orbit.mp4") and res["size"] == [24, 24]
    assert imageio_ffmpeg.count_frames_and_secs(res["video"])[0] == 3
    from PIL import Image

    frame = np.asarray(Image.open(tmp_path / "r" / "frames" / "frame_000.png"))
    assert frame.shape == (24, 24, 3) and frame.min() < 200  # the ball is in view, not only the white background
    assert main(["render", "--checkpoint", str(ckpt), "--size", "2", "--out", str(tmp_path / "bad")]) == 2
    assert "--size must be in [8, 4096]" in capsys.readouterr().err and not (tmp_path / "bad").exists()
