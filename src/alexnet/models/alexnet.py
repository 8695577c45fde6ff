"""AlexNet: the 2012 paper's network, its two-GPU grouped layout, and the 2014 single column.

Shapes in the comments are for a 227x227 input, the size at which the paper's
arithmetic works out (its text says 224; (224 - 11) / 4 + 1 is not a whole number).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from .lrn import LocalResponseNorm
from .registry import register_model

# The paper's LRN constants: k=2, n=5, alpha=1e-4, beta=0.75. Its equation multiplies the
# window sum by alpha itself, while LocalResponseNorm (like torch and Caffe) multiplies it
# by alpha / n; alpha * n here makes the two equations the same.
PAPER_LRN = dict(size=5, alpha=1e-4 * 5, beta=0.75, k=2.0)

INITS = ("paper", "torch")


class AlexNet(nn.Module):
    """The 2012 network, with the paper's choices as defaults and the ablations as arguments.

    groups=2 gives the two-GPU connectivity: conv2, conv4 and conv5 see only their own
    half of the previous layer; conv1, conv3 and the classifier see everything.

    Pooling rounds up (ceil_mode), as Caffe's reference AlexNet did: at 227 px this
    changes nothing (55 -> 27 -> 13 -> 6), and it lets inputs down to 39 px through.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.5,
        *,
        groups: int = 1,
        lrn: bool = True,
        pool_kernel: int = 3,
        pool_stride: int = 2,
        init: str = "paper",
    ):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")

        def norm() -> nn.Module:
            return LocalResponseNorm(**PAPER_LRN, groups=groups) if lrn else nn.Identity()

        def pool() -> nn.Module:
            return nn.MaxPool2d(pool_kernel, pool_stride, ceil_mode=True)

        self.features = nn.Sequential(
            OrderedDict(
                conv1=nn.Conv2d(in_channels, 96, 11, stride=4),  # (B, 96, 55, 55)
                relu1=nn.ReLU(inplace=True),
                norm1=norm(),
                pool1=pool(),  # (B, 96, 27, 27)
                conv2=nn.Conv2d(96, 256, 5, padding=2, groups=groups),  # (B, 256, 27, 27)
                relu2=nn.ReLU(inplace=True),
                norm2=norm(),
                pool2=pool(),  # (B, 256, 13, 13)
                conv3=nn.Conv2d(256, 384, 3, padding=1),  # (B, 384, 13, 13)
                relu3=nn.ReLU(inplace=True),
                conv4=nn.Conv2d(384, 384, 3, padding=1, groups=groups),  # (B, 384, 13, 13)
                relu4=nn.ReLU(inplace=True),
                conv5=nn.Conv2d(384, 256, 3, padding=1, groups=groups),  # (B, 256, 13, 13)
                relu5=nn.ReLU(inplace=True),
                pool5=pool(),  # (B, 256, 6, 6)
            )
        )
        # Identity at 227 px; smaller or larger inputs are brought to the 6x6 the classifier expects.
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))  # (B, 256, 6, 6)
        self.classifier = nn.Sequential(
            OrderedDict(
                drop6=nn.Dropout(dropout),
                fc6=nn.Linear(256 * 6 * 6, 4096),  # (B, 4096)
                relu6=nn.ReLU(inplace=True),
                drop7=nn.Dropout(dropout),
                fc7=nn.Linear(4096, 4096),  # (B, 4096)
                relu7=nn.ReLU(inplace=True),
                fc8=nn.Linear(4096, num_classes),  # (B, num_classes)
            )
        )
        if init == "paper":
            self._paper_init()

    def _paper_init(self) -> None:
        # Section 5: weights from N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden
        # fully connected layers (so the ReLUs start with positive inputs), 0 elsewhere.
        _normal_init(self, ones={"features.conv2", "features.conv4", "features.conv5", "classifier.fc6", "classifier.fc7"})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _normal_init(model: nn.Module, ones: set[str]) -> None:
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.constant_(m.bias, 1.0 if name in ones else 0.0)


class AlexNetOWT(nn.Module):
    """Krizhevsky 2014, "One weird trick": one column of 64-192-384-256-256, no LRN.

    Module layout and key names are torchvision's ``models.alexnet`` exactly, so its
    ImageNet weights load into this class and the other way round.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5, *, init: str = "torch"):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2),  # (B, 64, 55, 55) at 224
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 64, 27, 27)
            nn.Conv2d(64, 192, kernel_size=5, padding=2),  # (B, 192, 27, 27)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 192, 13, 13)
            nn.Conv2d(192, 384, kernel_size=3, padding=1),  # (B, 384, 13, 13)
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),  # (B, 256, 13, 13)
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),  # (B, 256, 13, 13)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),  # (B, 256, 6, 6)
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))  # (B, 256, 6, 6)
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),  # (B, 4096)
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),  # (B, 4096)
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),  # (B, num_classes)
        )
        if init == "paper":
            # The 2012 recipe carried over layer for layer: N(0, 0.01) weights, biases 1 in
            # conv2, conv4, conv5, fc6, fc7.
            _normal_init(self, ones={"features.3", "features.8", "features.10", "classifier.1", "classifier.4"})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


# Parameter counts, 1000 classes and 3 input channels (weights + biases):
#   conv1 96*3*11*11 + 96 = 34,944            fc6 9216*4096 + 4096 = 37,752,832
#   conv2 256*96*5*5 + 256 = 614,656          fc7 4096*4096 + 4096 = 16,781,312
#   conv3 384*256*3*3 + 384 = 885,120         fc8 4096*1000 + 1000 =  4,097,000
#   conv4 384*384*3*3 + 384 = 1,327,488
#   conv5 256*384*3*3 + 256 = 884,992         total                  62,378,344
# Grouped (groups=2 halves the input channels each kernel sees in conv2, conv4, conv5):
#   conv2 256*48*25 + 256 = 307,456   conv4 384*192*9 + 384 = 663,936   conv5 256*192*9 + 256 = 442,624
#   total 62,378,344 - (614,656 - 307,456) - (1,327,488 - 663,936) - (884,992 - 442,624) = 60,965,224
# One weird trick: conv1 64*3*121 + 64 = 23,296; conv2 192*64*25 + 192 = 307,392;
#   conv3 384*192*9 + 384 = 663,936; conv4 256*384*9 + 256 = 884,992; conv5 256*256*9 + 256 = 590,080;
#   with the same classifier: 61,100,840 (torchvision's published figure).


@register_model(
    reproduces="Krizhevsky, Sutskever & Hinton 2012, one-column form: LRN, overlapping pooling, paper init",
    native_size=227,
    num_params=62_378_344,
    min_size=39,
)
def alexnet_paper(*, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5, **kw) -> AlexNet:
    return AlexNet(num_classes, in_channels, dropout, **kw)


@register_model(
    reproduces="Krizhevsky, Sutskever & Hinton 2012, two-GPU layout (groups=2), the 60M-parameter network",
    native_size=227,
    num_params=60_965_224,
    min_size=39,
)
def alexnet_paper_grouped(*, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5, **kw) -> AlexNet:
    return AlexNet(num_classes, in_channels, dropout, groups=2, **kw)


@register_model(
    reproduces='Krizhevsky 2014 "one weird trick" single column; state_dict-compatible with torchvision',
    native_size=224,
    num_params=61_100_840,
    min_size=63,
)
def alexnet_owt(*, num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5, init: str = "torch") -> AlexNetOWT:
    return AlexNetOWT(num_classes, in_channels, dropout, init=init)
