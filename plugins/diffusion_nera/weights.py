"""Shipped default: a small base pipeline pre-trained on the procedural base textures, plus the
evaluation classifier. Both are made by :func:`make_default_weights` (``lowrank-diffusion
pretrain-base``), which also writes ``card.json`` and ``README.md`` with the numbers it measured.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from lowrank_vision.core.files import atomic_dir, write_json, write_text
from lowrank_vision.datasets.diffusion.procedural import make_split

from .config import PretrainConfig
from .metrics import SceneClassifier, classifier_accuracy, concept_score, generate, prompt_fidelity, train_classifier

__all__ = ["DEFAULT_WEIGHTS", "make_default_weights", "load_base", "load_classifier", "CLASSIFIER_NAME"]

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "base_procedural"
CLASSIFIER_NAME = "scene_classifier.safetensors"
N_EVAL = 24


def load_base(directory: Path | None = None, device: str = "cpu"):
    """The pipeline in ``directory`` (default: the shipped base), loaded with ``local_files_only=True``."""
    from .model import load_pipeline

    return load_pipeline(directory or DEFAULT_WEIGHTS, device)


def load_classifier(directory: Path | None = None) -> SceneClassifier:
    from safetensors.torch import load_file

    path = Path(directory or DEFAULT_WEIGHTS) / CLASSIFIER_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no scene classifier at {path} (made by lowrank-diffusion pretrain-base)")
    model = SceneClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def base_scores(pipe, classifier: SceneClassifier, n: int = N_EVAL, steps: int = 20, seed: int = 0) -> dict:
    """Concept score on ``concept_test`` prompts and prompt fidelity on ``test`` prompts (held-out splits)."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    _, concept_prompts, _ = make_split("concept_test", n, size)
    _, base_prompts, base_scenes = make_split("test", n, size)
    return {"concept_score": concept_score(classifier, generate(pipe, concept_prompts, steps=steps, seed=seed)),
            "prompt_fidelity": prompt_fidelity(classifier, generate(pipe, base_prompts, steps=steps, seed=seed), base_scenes)}


def make_default_weights(out_dir: Path, config: PretrainConfig, classifier_steps: int = 300, device: str = "cpu", command: str = "") -> dict:
    """Pre-train the base pipeline and the classifier, measure them, write everything to ``out_dir`` at once."""
    from safetensors.torch import save_file

    from .model import build_pipeline
    from .recipes import Denoiser, eval_denoising_loss, pretrain_base, tokenize, encode_latents

    start = time.time()
    pipe = build_pipeline(config.pipeline, seed=config.train.seed).to(device)
    pipe.set_progress_bar_config(disable=True)
    history = pretrain_base(pipe, config)
    size = config.pipeline.image_size
    classifier = train_classifier(size, steps=classifier_steps, seed=config.train.seed)
    val_images, val_captions, _ = make_split("val", 128, size)
    val_loss = eval_denoising_loss(Denoiser(pipe.unet, pipe.text_encoder, pipe.scheduler),
                                   encode_latents(pipe.vae, val_images), tokenize(pipe, val_captions))
    card = {
        "command": command,
        "config": asdict(config),
        "data": "procedural scenes, split 'train' (base textures plain/striped/dotted only); scores on held-out 'val'/'test'/'concept_test'",
        "val_denoising_loss": val_loss,
        "final_train_loss": history["final_loss"],
        "vae_final_mse": history["vae_history"][-1].get("mse") if history["vae_history"] else None,
        "scaling_factor": history["scaling_factor"],
        "classifier_test_accuracy": classifier_accuracy(classifier, size),
        "base_samples": base_scores(pipe, classifier),
        "seconds": round(time.time() - start, 1),
        "device": device,
    }
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(tmp / CLASSIFIER_NAME))
        write_json(tmp / "card.json", card)
        write_json(tmp / "train_history.json", history)
        write_text(tmp / "README.md", _card_markdown(card))
    return card


def _card_markdown(card: dict) -> str:
    c = card["config"]
    return (
        "# Base pipeline for lowrank-diffusion (procedural scenes)\n\n"
        f"Written by: `{card['command']}` in {card['seconds']} s on {card['device']}.\n\n"
        f"A `StableDiffusionPipeline` built from configs ({json.dumps(c['pipeline'])}), VAE trained {c['vae_steps']} steps, "
        f"UNet + text encoder {c['train']['max_steps']} steps on {c['n_images']} scenes of split `train` "
        "(textures plain, striped, dotted; the new texture `checkered` never seen).\n\n"
        f"- held-out `val` noise-prediction loss: {card['val_denoising_loss']:.4f}\n"
        f"- scene classifier accuracy on `classifier_test`: {json.dumps({k: round(v, 3) for k, v in card['classifier_test_accuracy'].items()})}\n"
        f"- base samples: concept score (called 'checkered') on `concept_test` prompts {card['base_samples']['concept_score']:.3f}, "
        f"prompt fidelity (colour and shape right) on `test` prompts {card['base_samples']['prompt_fidelity']:.3f}\n"
    )
