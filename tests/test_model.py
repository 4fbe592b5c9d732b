"""The ResNet-18 CIFAR variant: parameter count, structure, norm=none."""

from __future__ import annotations

import torch
from torch import nn

from trainbench.models.resnet import ResNet18, count_trainable


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


# The lab's reference implementation (the widely used pytorch-cifar ResNet-18), written out here as the
# independent reference: its state-dict keys and its per-layer summary are what the lab's report shows.
class _RefBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class _RefResNet18(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(64, 1)
        self.layer2 = self._make_layer(128, 2)
        self.layer3 = self._make_layer(256, 2)
        self.layer4 = self._make_layer(512, 2)
        self.linear = nn.Linear(512, num_classes)

    def _make_layer(self, planes, stride):
        layers = []
        for s in (stride, 1):
            layers.append(_RefBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = torch.nn.functional.avg_pool2d(out, 4)
        return self.linear(out.view(out.size(0), -1))


def test_state_dict_loads_the_reference_codes_checkpoints_and_computes_the_same():
    ref = _RefResNet18().eval()
    mine = ResNet18().eval()
    assert list(mine.state_dict()) == list(ref.state_dict())
    mine.load_state_dict(ref.state_dict())  # strict: same keys, same shapes
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(mine(x), ref(x))


def _summary_rows(model) -> list[str]:
    import contextlib
    import io

    from torchsummary import summary

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        summary(model, (3, 32, 32), device="cpu")
    return [
        line.split()[0]
        for line in buf.getvalue().splitlines()
        if line.strip() and line.split()[0][-1:].isdigit() and "-" in line.split()[0]
    ]


def test_third_party_summary_prints_the_labs_table():
    """torchsummary (as the lab's report used) gives the lab's 49 rows, Conv2d-1 ... Linear-49, row for row."""
    rows = _summary_rows(ResNet18())
    assert rows == [r.replace("_RefBlock", "BasicBlock") for r in _summary_rows(_RefResNet18())]
    assert len(rows) == 49 and rows[0] == "Conv2d-1" and rows[-1] == "Linear-49"
    assert not any(r.startswith("Identity") for r in rows)


def test_inspect_layer_table_lists_real_layers_only():
    from trainbench.questions import model_facts

    f = model_facts(
        {
            "norm": {"name": "batchnorm"},
            "optimizer": {"name": "sgd", "_target_": "torch.optim.SGD", "lr": 0.1},
            "model": {"width": 8},
        },
        layers=True,
    )
    types = [r["type"] for r in f["layers"]]
    assert types.count("Conv2d") == 20 and types.count("BatchNorm2d") == 20 and types[-1] == "Linear"
    assert len(types) == 41 and "Sequential" not in types
