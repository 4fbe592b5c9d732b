"""trainbench: where does ResNet-18 / CIFAR-10 training time go?"""

__version__ = "0.1.0"
