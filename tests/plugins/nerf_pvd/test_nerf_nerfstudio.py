"""nerfstudio integration: ``ns-train`` lists the methods and runs a few ``lowrank-pvd`` iterations on a generated scene.

Needs nerfstudio installed the way the README's ``nerf`` install says (the ``nerf`` extra, then
``pip install --no-deps nerfstudio==1.1.5``); CI must install it so this test runs, not skips.
"""

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("nerfstudio", reason="nerfstudio not installed: pip install -e '.[nerf]' && pip install --no-deps nerfstudio==1.1.5")


# ``ns-train`` is the console script of ``nerfstudio.scripts.train:entrypoint``. One child interpreter calls that
# entry point twice, as ``ns-train --help`` and then as ``ns-train lowrank-pvd ...`` (the run's arguments are this
# script's argv), so nerfstudio's ~8-s import is paid once instead of once per command.
_HELP_THEN_RUN = """
import sys
from nerfstudio.scripts.train import entrypoint
run_args = sys.argv[1:]
sys.argv = ["ns-train", "--help"]
try:
    entrypoint()
except SystemExit as exc:
    if exc.code not in (0, None):
        raise
print("=== END OF HELP ===", flush=True)
sys.argv = ["ns-train", *run_args]
entrypoint()
"""


def test_ns_train_lists_and_runs_lowrank_pvd(tmp_path):
    from lowrank_vision.datasets.nerf import SceneConfig, make_scene
    from lowrank_vision.plugins.nerf_pvd.config import FieldConfig
    from lowrank_vision.plugins.nerf_pvd.fields import HashGridField
    from lowrank_vision.plugins.nerf_pvd.model import CameraRig, save_field

    env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1", OMP_NUM_THREADS="1")
    make_scene(tmp_path / "scene", SceneConfig(width=16, n_train=4, n_val=2, n_test=2))
    cfg = FieldConfig(kind="hash", hash_levels=4, hash_log2_table=12, hash_max_res=32)
    torch.manual_seed(0)
    teacher = save_field(tmp_path / "teacher.safetensors", HashGridField(1.0, 15, levels=4, log2_table=12, max_res=32), cfg,
                         CameraRig(16, 16, (29.0, 29.0, 8.0, 8.0), (3.2, 3.2), (10.0, 65.0), (0.0, 0.0, -0.45)))
    run = subprocess.run(
        [sys.executable, "-c", _HELP_THEN_RUN, "lowrank-pvd", "--data", str(tmp_path / "scene"), "--output-dir", str(tmp_path / "out"),
         "--max-num-iterations", "4", "--machine.device-type", "cpu", "--vis", "tensorboard",
         "--pipeline.datamanager.train-num-rays-per-batch", "64", "--pipeline.model.n-coarse", "8", "--pipeline.model.n-fine", "8",
         "--pipeline.model.teacher-checkpoint", str(teacher), "--pipeline.model.student-kind", "tensorf_vm",
         "--pipeline.model.stage1-iters", "1", "--pipeline.model.stage2-iters", "2", "--steps-per-eval-batch", "2",
         "--steps-per-eval-image", "1000", "--steps-per-eval-all-images", "1000", "--steps-per-save", "1000"],
        capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    listing = run.stdout.split("=== END OF HELP ===")[0]
    assert "lowrank-pvd" in listing and "lowrank-field" in listing  # ns-train --help lists both methods
    ckpts = list((tmp_path / "out").glob("scene/lowrank-pvd/*/nerfstudio_models/step-*.ckpt"))
    assert [c.name for c in ckpts] == ["step-000000003.ckpt"]
    state = torch.load(ckpts[0], map_location="cpu", weights_only=False)["pipeline"]
    assert any(k.startswith("_model.field.density_planes") for k in state)  # the student is a TensoRF VM
    assert not any(".teacher" in k for k in state)  # the frozen teacher is not saved with the student
