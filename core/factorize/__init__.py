"""Low-rank compression of trained models (WeLore rank choice, Tucker/CP kernels, PELA distillation, Maestro ranks).

    >>> from lowrank_vision.core import factorize
    >>> report = factorize.compress(model, budget=0.5)          # keep half of the parameters
    >>> print(report)                                           # per layer: rank, params, relative error
    >>> factorize.distill(model, original, unlabelled_batches)  # PELA feature distillation
    >>> factorize.save(model, "runs/compressed"); factorize.load(fresh_model, "runs/compressed")
    >>> loss = task_loss + 1e-3 * factorize.group_lasso_penalty(model)  # Maestro: learn the ranks
    >>> factorize.truncate(model, threshold=0.05)                        # then cut the shrunk trailing ranks

Math in ``core.functional.factorize``; see docs/compression.md.
"""

from .compress import (
    CompressionReport, ErrorBudget, LayerCompression, OrderedRankDropout, ParamBudget, compress, factorize_full_rank,
    factorized_layers, group_lasso_penalty, group_norms, truncate,
)
from .distill import DistillReport, distill
from .io import CompressedFileError, load, save
from .layers import CPConv, LowRankLayer, TuckerConv

__all__ = [
    "compress", "truncate", "factorize_full_rank", "factorized_layers", "OrderedRankDropout", "group_lasso_penalty",
    "group_norms", "distill", "save", "load",
    "ParamBudget", "ErrorBudget", "CompressionReport", "LayerCompression", "DistillReport", "CompressedFileError",
    "LowRankLayer", "TuckerConv", "CPConv",
]
