"""Hot-Swap MarkBoard watermarking: an n-bit owner signature as n swappable LoRA branches.

    >>> from lowrank_vision.core import watermark
    >>> board = watermark.embed(model, clean_inputs, watermark.MarkBoardConfig(n_bits=8))
    >>> board.set_signature(model, user_bits)                   # hot swap, no retraining
    >>> shipped = board.distribute(model, user_bits)            # plain model, branches merged in
    >>> board.verify(shipped, user_bits).verified               # black box: outputs only
    >>> watermark.save(model, board, "runs/markboard"); board = watermark.load(base_model, "runs/markboard")

Trigger and decoding math in ``core.functional.watermark``; see docs/compression.md.
"""

from .io import MarkBoardFileError, load, save
from .markboard import BRANCH_PREFIX, MarkBoard, MarkBoardConfig, Verification, embed

__all__ = ["embed", "save", "load", "MarkBoard", "MarkBoardConfig", "Verification", "MarkBoardFileError", "BRANCH_PREFIX"]
