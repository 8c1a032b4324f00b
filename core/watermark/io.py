"""Save and load a MarkBoard: the owner's key and the 2n signature branches.

A folder with ``markboard.json`` (config, branch names, target classes), ``key.safetensors``
(trigger masks, patterns, target classes, verification inputs) and ``branches/<name>/``, one core
adapter folder per branch (``core.save``). Written as a whole through ``core.files.atomic_dir``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Union

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..files import atomic_dir, write_json
from ..inject import rollback_on_error
from ..io import load as load_adapter
from ..io import save as save_adapter
from .markboard import MarkBoard, MarkBoardConfig

__all__ = ["save", "load", "MarkBoardFileError"]

RECORD_NAME = "markboard.json"
KEY_NAME = "key.safetensors"
FORMAT = "lowrank-vision-markboard"


class MarkBoardFileError(ValueError):
    """A MarkBoard folder is missing, corrupt, or does not fit the model."""


def save(model: nn.Module, board: MarkBoard, directory: Union[str, os.PathLike]) -> Path:
    """Write ``board``'s key and the branches it trained on ``model`` to ``directory``."""
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        tensors = {"masks": board.masks.contiguous(), "patterns": board.patterns.contiguous(),
                   "targets": board.targets.contiguous(), "verify_inputs": board.verify_inputs.detach().cpu().contiguous()}
        save_file(tensors, str(tmp / KEY_NAME), metadata={"format": FORMAT})
        for name in board.branch_names():
            save_adapter(model, tmp / "branches" / name, adapter_name=name)
        write_json(tmp / RECORD_NAME, {"format": FORMAT, **board.to_record()})
    return directory


def load(model: nn.Module, directory: Union[str, os.PathLike]) -> MarkBoard:
    """Load the key and put the saved branches onto ``model`` (the base model they were trained on); none is active after.

    On any error the model is left as it was.
    """
    directory = Path(directory)
    path = directory / RECORD_NAME
    if not path.is_file():
        raise MarkBoardFileError(f"{path} does not exist; expected a folder written by core.watermark.save")
    try:
        record = json.loads(path.read_text())
        tensors = load_file(str(directory / KEY_NAME))
    except (json.JSONDecodeError, UnicodeDecodeError, SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise MarkBoardFileError(f"{directory} is corrupt or incomplete: {exc}") from exc
    if record.get("format") != FORMAT:
        raise MarkBoardFileError(f"{path} is not a MarkBoard record (format={record.get('format')!r})")
    config = record["config"]
    if config.get("targets") is not None:
        config["targets"] = tuple(config["targets"])
    board = MarkBoard(MarkBoardConfig(**config), tensors["masks"], tensors["patterns"], tensors["targets"], tensors["verify_inputs"])
    with rollback_on_error(model):
        for name in board.branch_names():
            load_adapter(model, directory / "branches" / name, adapter_name=name)
        board.set_signature(model, None)
    return board
