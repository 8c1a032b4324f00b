"""nerfstudio methods (entry-point group ``nerfstudio.method_configs``): ``lowrank-pvd`` and ``lowrank-field``.

``ns-train lowrank-field --data DIR [--pipeline.model.field-kind hash|mlp|tensorf_vm|grid]`` trains one
of this plugin's pure-PyTorch fields on a Blender-layout dataset (``transforms_<split>.json``, e.g.
what ``lowrank-nerf make-scene`` writes). ``ns-train lowrank-pvd --data DIR
--pipeline.model.teacher-checkpoint CKPT`` distils a teacher checkpoint written by ``lowrank-nerf
train`` (default: the shipped hash teacher) into ``--pipeline.model.student-kind`` with PVD's staged
losses on samples shared with the teacher. Inside nerfstudio the rays come from the datamanager
(the training cameras' poses; the images themselves are not used by the PVD loss), not from the
random poses of :func:`..recipes.distill`; that is the one difference from ``lowrank-nerf distill``.
Both run on CPU (``--machine.device-type cpu``) since nothing here needs CUDA extensions.
This module imports nerfstudio; nothing else in the plugin does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Literal, Optional, Type

import torch
from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.datamanagers.base_datamanager import VanillaDataManagerConfig
from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.models.base_model import Model, ModelConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from .config import DistillConfig, FieldConfig
from .metrics import psnr, ssim
from .model import build_field, load_field
from .recipes import _norm_loss, _stage, clip_density_pair
from .render import RenderConfig, composite, render_rays, render_teacher

__all__ = ["LowrankFieldModelConfig", "LowrankFieldModel", "LowrankPVDModelConfig", "LowrankPVDModel", "lowrank_field", "lowrank_pvd"]


@dataclass
class LowrankFieldModelConfig(ModelConfig):
    """One of nerf_pvd's fields trained on images."""

    _target: Type = field(default_factory=lambda: LowrankFieldModel)
    field_kind: Literal["hash", "mlp", "tensorf_vm", "grid"] = "hash"
    """Architecture of the field."""
    n_coarse: int = 32
    """Stratified samples per ray."""
    n_fine: int = 32
    """Importance samples per ray."""
    background: float = 1.0
    """Background grey level (Blender data are composited on white)."""


class LowrankFieldModel(Model):
    """nerfstudio model around a :mod:`..fields` field and the plugin's renderer."""

    config: LowrankFieldModelConfig

    def populate_modules(self):
        super().populate_modules()
        bound = float(self.scene_box.aabb.abs().max())
        self.field = build_field(FieldConfig(kind=self.config.field_kind, bound=bound))
        self.render_cfg = RenderConfig(n_coarse=self.config.n_coarse, n_fine=self.config.n_fine, background=self.config.background)

    def get_param_groups(self) -> Dict[str, List[torch.nn.Parameter]]:
        return {"fields": list(self.field.parameters())}

    def _rays(self, ray_bundle):
        return ray_bundle.origins.reshape(-1, 3), torch.nn.functional.normalize(ray_bundle.directions.reshape(-1, 3), dim=-1)

    def get_outputs(self, ray_bundle):
        o, d = self._rays(ray_bundle)
        out = render_rays(self.field, o, d, self.render_cfg, training=self.training)
        return {"rgb": out["rgb"], "accumulation": out["acc"][:, None], "depth": out["depth"][:, None]}

    def _target_rgb(self, batch):
        img = batch["image"].to(self.device)
        if img.shape[-1] == 4:
            img = img[..., :3] * img[..., 3:] + self.config.background * (1 - img[..., 3:])
        return img

    def get_metrics_dict(self, outputs, batch):
        return {"psnr": torch.tensor(psnr(outputs["rgb"].detach(), self._target_rgb(batch).reshape(-1, 3)))}

    def get_loss_dict(self, outputs, batch, metrics_dict=None):
        return {"rgb_loss": torch.nn.functional.mse_loss(outputs["rgb"], self._target_rgb(batch).reshape(-1, 3))}

    def get_image_metrics_and_images(self, outputs, batch):
        gt, pred = self._target_rgb(batch), outputs["rgb"]
        metrics = {"psnr": psnr(pred, gt), "ssim": ssim(pred, gt)}
        return metrics, {"img": torch.cat([gt, pred], dim=1)}


@dataclass
class LowrankPVDModelConfig(LowrankFieldModelConfig):
    """PVD from a ``lowrank-nerf`` teacher checkpoint into a student field."""

    _target: Type = field(default_factory=lambda: LowrankPVDModel)
    teacher_checkpoint: Optional[Path] = None
    """Teacher ``.safetensors`` (``lowrank-nerf train``); default: the shipped hash teacher."""
    student_kind: Literal["hash", "mlp", "tensorf_vm", "grid"] = "tensorf_vm"
    """Student architecture."""
    stage1_iters: int = 2000
    """Stage-1 (volume feature) steps."""
    stage2_iters: int = 5000
    """Stage-2 (+ density, colour) steps; then stage 3 adds rendered RGB."""


class LowrankPVDModel(LowrankFieldModel):
    """Student field trained by PVD's staged losses against a frozen teacher on shared samples."""

    config: LowrankPVDModelConfig

    def populate_modules(self):
        Model.populate_modules(self)
        from .weights import shipped_checkpoint

        ckpt = self.config.teacher_checkpoint or shipped_checkpoint("teacher")
        teacher, _, rig, _ = load_field(ckpt)
        self.teacher = [teacher.requires_grad_(False)]  # a list: kept out of the state dict and the optimizer
        self.field = build_field(FieldConfig(kind=self.config.student_kind, bound=teacher.bound))
        self.render_cfg = RenderConfig(n_coarse=self.config.n_coarse, n_fine=self.config.n_fine, background=rig.background)
        self.distill_cfg = replace(DistillConfig(student=FieldConfig(kind=self.config.student_kind)),
                                   stage1_iters=self.config.stage1_iters, stage2_iters=self.config.stage2_iters)
        self.step = 0

    def get_training_callbacks(self, attrs: TrainingCallbackAttributes) -> List[TrainingCallback]:
        def set_step(step):
            self.step = step

        return [TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], set_step, update_every_num_iters=1)]

    def get_outputs(self, ray_bundle):
        o, d = self._rays(ray_bundle)
        teacher = self.teacher[0].to(self.device)
        samples, t_out = render_teacher(teacher, o, d, self.render_cfg, training=self.training)
        s_out = composite(self.field, o, d, samples, self.render_cfg.background)
        # the tuple (not a tensor) is skipped when nerfstudio assembles full images from chunks
        return {"rgb": s_out["rgb"], "accumulation": s_out["acc"][:, None], "depth": s_out["depth"][:, None],
                "_pvd": (s_out, t_out, samples["hit"])}

    def get_loss_dict(self, outputs, batch, metrics_dict=None):
        s, t, hit = outputs["_pvd"]
        c = self.distill_cfg
        stage = _stage(self.step, c, self.field.has_feature and self.teacher[0].has_feature)
        s_sig, t_sig = clip_density_pair(s["sigma_pre"][hit], t["sigma_pre"][hit], *c.density_clip)
        if stage == 1:
            diff = s["feature"][hit] - torch.cat([t_sig[..., None], t["feature"][hit][..., 1:]], -1)
            return {"feature_loss": c.w_feature * c.feature_decay ** self.step * _norm_loss(diff, c.loss_type)}
        occ = t_sig > c.density_clip[0]
        losses = {"density_loss": c.w_density * _norm_loss(s_sig - t_sig, c.loss_type),
                  "colour_loss": c.colour_weight() * _norm_loss(s["point_rgb"][hit][occ] - t["point_rgb"][hit][occ], c.loss_type)}
        if stage == 3:
            losses["rgb_loss"] = c.w_rgb * _norm_loss(s["rgb"] - t["rgb"], c.loss_type)
        return losses

    def get_metrics_dict(self, outputs, batch):
        s, t, _ = outputs["_pvd"]
        return super().get_metrics_dict(outputs, batch) | {"psnr_vs_teacher": torch.tensor(psnr(s["rgb"].detach(), t["rgb"]))}


def _trainer(name: str, model: ModelConfig, lr: float) -> TrainerConfig:
    return TrainerConfig(
        method_name=name, steps_per_eval_batch=500, steps_per_save=2000, max_num_iterations=30000, mixed_precision=False,
        pipeline=VanillaPipelineConfig(
            datamanager=VanillaDataManagerConfig(dataparser=BlenderDataParserConfig(), train_num_rays_per_batch=1024,
                                                 eval_num_rays_per_batch=1024),
            model=model),
        optimizers={"fields": {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15), "scheduler": None}},
        viewer=ViewerConfig(num_rays_per_chunk=1 << 12), vis="tensorboard")


lowrank_field = MethodSpecification(
    config=_trainer("lowrank-field", LowrankFieldModelConfig(), 1e-2),
    description="lowrank-vision: pure-PyTorch NeRF fields (hash grid, NeRF MLP, TensoRF-VM, SH grid) trained on images")

lowrank_pvd = MethodSpecification(
    config=_trainer("lowrank-pvd", LowrankPVDModelConfig(), 1e-2),
    description="lowrank-vision: Progressive Volume Distillation from a teacher field into another architecture")
