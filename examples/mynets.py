"""An example of your own network for model=custom (any importable class works the same way):

    python train.py model=custom model._target_=examples.mynets.SmallCNN +model.width=32

Extra keys (+model.<key>=<value>) are the class's keyword arguments; num_classes is passed because the class
takes it (trainbench fills it from the data's class count).
"""

from torch import nn


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU stages (width, 2x, 4x channels), each halving the side, then a global pool and a Linear."""

    def __init__(self, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        layers, cin = [], 3
        for i in range(3):
            cout = width * 2**i
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))
