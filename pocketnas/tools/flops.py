"""Parameters and FLOPs of a network, counted the way PocketNet (Boutros et al., 2021) counts them.

Costs per layer:

- convolution: `2 * k_h * k_w * C_in / groups` per output element, +1 with a bias;
- linear layer: `2 * weights`, + bias;
- BatchNorm: 2 per input element; ReLU and PReLU: 1 per input element;
- max and average pooling: `k * k` per output element;
- identity, zero and concatenation: nothing.
 With these rules PocketNetS-128 costs 587.11 MFLOPs for one 3x112x112 image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Complexity:
    """Parameters and FLOPs of one forward pass of a single image."""

    params: int
    flops: int

    @property
    def mflops(self) -> float:
        return self.flops / 1e6


def _kernel_area(kernel_size: int | tuple[int, ...]) -> int:
    if isinstance(kernel_size, int):
        return kernel_size * kernel_size
    area = 1
    for side in kernel_size:
        area *= side
    return area


def _layer_flops(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        per_output = 2 * _kernel_area(module.kernel_size) * module.in_channels // module.groups
        if module.bias is not None:
            per_output += 1
        return per_output * output.numel()
    if isinstance(module, nn.Linear):
        flops = 2 * module.weight.numel()
        if module.bias is not None:
            flops += module.bias.numel()
        batch = output.numel() // module.out_features
        return flops * batch
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return 2 * inputs[0].numel()
    if isinstance(module, (nn.ReLU, nn.PReLU)):
        return inputs[0].numel()
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        return _kernel_area(module.kernel_size) * output.numel()
    return 0


def count_complexity(model: nn.Module, image_size: int = 112) -> Complexity:
    """Count the parameters and the FLOPs of `model` on one 3 x size x size image.

    Every parameter tensor counts, frozen ones included (IResNet's fixed `features` scale), as
    the published parameter counts of PocketNet and the IResNet teachers do.
    """
    total = 0

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        total += _layer_flops(module, inputs, output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return Complexity(params=params, flops=total)
