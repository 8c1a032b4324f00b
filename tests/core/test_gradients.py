"""Every execution strategy gives the same gradient to every trainable parameter, base ones included.

A base parameter made trainable (``trainable=("*.bias",)``, or the wrapped layer's own weight)
must get the gradient of the weight-space path whichever strategy runs; the fused activation
kernels once returned no gradient for them.
"""

from __future__ import annotations


import pytest
import torch


from .cases import METHODS, one_layer_model

DELTA_METHODS = ["lora", "conv_lora", "cp_lora", "dora", "conv_dora", "cp_dora", "nola"]
DELTA_METHODS += ["sltrain", "block_lora", "mtlora", "hypelora"]  # the families of issue 20 linear in the weight (options: cases.METHODS)
LAYER_TYPES = ["linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"]
TRAINABLE = {"bias": ("*.bias",), "base_weight": ("*.base_layer.weight",), "both": ("*.bias", "*.base_layer.weight")}
CASES = [(m, layer, t) for m in DELTA_METHODS for layer in LAYER_TYPES for t in TRAINABLE]


def gradients(method: str, layer_name: str, trainable: tuple[str, ...], strategy: str) -> dict[str, torch.Tensor]:
    model, x = one_layer_model(method, layer_name, strategy, trainable=trainable, **METHODS[method][0])
    out = model(x)
    probe = torch.linspace(-1, 1, out.numel()).view_as(out)
    (out * probe).sum().backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    grads["input"] = x.grad
    return grads


@pytest.mark.parametrize("method,layer_name,pattern", CASES)
def test_every_strategy_gives_every_trainable_parameter_the_same_gradient(method, layer_name, pattern):
    reference = gradients(method, layer_name, TRAINABLE[pattern], "weight")
    base_names = {"bias": ["0.base_layer.bias"], "base_weight": ["0.base_layer.weight"]}.get(pattern, ["0.base_layer.bias", "0.base_layer.weight"])
    for name in base_names:
        assert reference[name] is not None and reference[name].abs().sum() > 0, name
    for strategy in ("activation", "auto"):
        grads = gradients(method, layer_name, TRAINABLE[pattern], strategy)
        assert grads.keys() == reference.keys()
        for name, expected in reference.items():
            assert grads[name] is not None, f"{strategy}: no gradient for {name}"
            # float32 rounding scales with the gradient's size (a bias gradient sums over every output position)
            atol = 1e-5 + 1e-6 * float(expected.abs().max())
            torch.testing.assert_close(grads[name], expected, rtol=1e-4, atol=atol, msg=f"{strategy}: {name}")
