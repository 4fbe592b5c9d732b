"""The ResNet-18 CIFAR variant: parameter count, structure, norm=none."""

from __future__ import annotations

import torch
from torch import nn

from trainbench.model import ResNet18, count_trainable


def test_parameter_count_with_batchnorm():
    assert count_trainable(ResNet18("batchnorm")) == 11_173_962


def test_norm_none_has_no_norm_layer():
    m = ResNet18("none")
    norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
    assert not any(isinstance(x, norm_types) for x in m.modules())
    bn = ResNet18("batchnorm")
    # exactly the BatchNorm affine parameters are gone: 2 per channel of every BN layer
    bn_params = sum(p.numel() for x in bn.modules() if isinstance(x, nn.BatchNorm2d) for p in x.parameters())
    assert count_trainable(m) == 11_173_962 - bn_params


def test_structure_matches_spec():
    m = ResNet18()
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1) and m.conv1.bias is None
    assert not any(isinstance(x, nn.MaxPool2d) for x in m.modules())
    convs = [(n, x) for n, x in m.named_modules() if isinstance(x, nn.Conv2d)]
    assert all(x.bias is None for _, x in convs)
    assert len(convs) == 20 and sum("shortcut" not in n for n, _ in convs) == 17
    strides = [blocks[0].conv1.stride[0] for blocks in (m.layer1, m.layer2, m.layer3, m.layer4)]
    assert strides == [1, 2, 2, 2]
    assert [blocks[1].conv2.out_channels for blocks in (m.layer1, m.layer2, m.layer3, m.layer4)] == [64, 128, 256, 512]
    assert m.linear.in_features == 512 and m.linear.out_features == 10
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
