"""Shared by the tests that run torchvision architectures: smaller heads and non-trivial BatchNorm."""

from __future__ import annotations

import torch
from torch import nn
from torchvision import models


def slim_vgg11_bn() -> nn.Module:
    """vgg11_bn with its 123M-parameter head shrunk (same layout): copies and forwards cost ms, not seconds."""
    model = models.vgg11_bn(weights=None)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Sequential(
        nn.Linear(512, 64),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(64, 64),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(64, 10),
    )
    return model


def randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so eval-mode BN is not the identity."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.running_mean.copy_(torch.randn(c, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(c, generator=generator) * 0.1)
    return model
