"""PyTorch eager twins of the zoo models ``benchmarks/train_step.py`` times (same layers, widths,
norms, shortcuts and dropout as ``jaxvision.models``; NCHW with channels_last memory), and their
train step (SGD momentum 0.9, softmax cross-entropy) timed the same way. PyTorch is not a
dependency of this project: this file is only imported when ``torch`` is.

    python benchmarks/_torch_models.py CASE H W C BATCH CLASSES STEPS ROUNDS   # prints ms/step
"""

from __future__ import annotations

import statistics
import sys
import time

import torch
from torch import nn
import torch.nn.functional as F


def _bn_relu_conv(cin: int, cout: int, k: int, stride: int = 1, pad: int | None = None):
    return [nn.Conv2d(cin, cout, k, stride, k // 2 if pad is None else pad, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class LeNet5(nn.Module):
    """Zoo ``lenet5`` (relu, max pool): 28x28 zero-padded to 32, C5 a 5x5 conv."""

    def __init__(self, c: int, classes: int):
        super().__init__()
        self.c1, self.c3, self.c5 = nn.Conv2d(c, 6, 5), nn.Conv2d(6, 16, 5), nn.Conv2d(16, 120, 5)
        self.f6, self.head = nn.Linear(120, 84), nn.Linear(84, classes)

    def forward(self, x):
        ph, pw = 32 - x.shape[2], 32 - x.shape[3]
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        x = F.max_pool2d(F.relu(self.c1(x)), 2)
        x = F.max_pool2d(F.relu(self.c3(x)), 2)
        x = F.relu(self.c5(x)).flatten(1)
        return self.head(F.relu(self.f6(x)))


class SmallCNN(nn.Module):
    """Zoo ``small_cnn`` as ``experiments/classification.py:default`` builds it: a 3x3 conv + BN +
    ReLU per stage (16-256), 2x2 max pools between, global average pool, head."""

    def __init__(self, c: int, classes: int, widths=(16, 32, 64, 128, 256)):
        super().__init__()
        mods, cin = [], c
        for i, w in enumerate(widths):
            mods += _bn_relu_conv(cin, w, 3) + ([nn.MaxPool2d(2)] if i < len(widths) - 1 else [])
            cin = w
        self.body, self.head = nn.Sequential(*mods), nn.Linear(cin, classes)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


class Block(nn.Module):
    """Zoo ResNet basic block: 'pad' (option A) or 'projection' shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, shortcut: str):
        super().__init__()
        self.branch = nn.Sequential(*_bn_relu_conv(cin, cout, 3, stride),
                                    nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.stride, self.extra, self.proj = stride, cout - cin, None
        if (stride != 1 or cin != cout) and shortcut == "projection":
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        r = x
        if self.proj is not None:
            r = self.proj(x)
        elif self.stride != 1 or self.extra:
            r = x[:, :, ::self.stride, ::self.stride]
            r = F.pad(r, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return F.relu(self.branch(x) + r)


class ResNet(nn.Module):
    def __init__(self, c: int, classes: int, sizes, widths, shortcut: str):
        super().__init__()
        mods, cin = _bn_relu_conv(c, widths[0], 3), widths[0]
        for s, (n, w) in enumerate(zip(sizes, widths)):
            for b in range(n):
                mods.append(Block(cin, w, 2 if s and not b else 1, shortcut))
                cin = w
        self.body, self.head = nn.Sequential(*mods), nn.Linear(cin, classes)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


class AlexNet(nn.Module):
    """Zoo ``alexnet_torchvision``: 64-192-384-256-256, no norm, dropout 0.5 before fc6, fc7."""

    def __init__(self, c: int, classes: int):
        super().__init__()
        chans, specs = (64, 192, 384, 256, 256), ((11, 4, 2), (5, 1, 2), (3, 1, 1), (3, 1, 1), (3, 1, 1))
        mods, cin = [], c
        for i, (w, (k, s, p)) in enumerate(zip(chans, specs)):
            mods += [nn.Conv2d(cin, w, k, s, p), nn.ReLU(inplace=True)]
            if i in (0, 1, 4):
                mods.append(nn.MaxPool2d(3, 2))
            cin = w
        self.features = nn.Sequential(*mods)
        self.fc = nn.Sequential(nn.Dropout(0.5), nn.Linear(256 * 36, 4096), nn.ReLU(inplace=True),
                                nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
                                nn.Linear(4096, classes))

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 6).flatten(1))


class VGG11(nn.Module):
    """Zoo ``vgg11`` with ``norm='batch', fc_width=512, grid=1, dropout=0.5``."""

    def __init__(self, c: int, classes: int):
        super().__init__()
        mods, cin = [], c
        for stage in ((64,), (128,), (256, 256), (512, 512), (512, 512)):
            for w in stage:
                mods += [nn.Conv2d(cin, w, 3, 1, 1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
                cin = w
            mods.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*mods)
        self.fc = nn.Sequential(nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(0.5),
                                nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(0.5),
                                nn.Linear(512, classes))

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class UNet(nn.Module):
    """Zoo ``unet``: double 3x3 conv + BN + ReLU per level, 2x2 max pool, 2x2/2 transposed conv."""

    def __init__(self, c: int, classes: int, widths=(32, 64, 128, 256)):
        super().__init__()

        def double(cin, w):
            return nn.Sequential(*_bn_relu_conv(cin, w, 3), *_bn_relu_conv(w, w, 3))

        self.down = nn.ModuleList()
        cin = c
        for w in widths:
            self.down.append(double(cin, w))
            cin = w
        self.ups, self.dbl = nn.ModuleList(), nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.ups.append(nn.ConvTranspose2d(cin, w, 2, 2))
            self.dbl.append(double(2 * w, w))
            cin = w
        self.head = nn.Conv2d(cin, classes, 1)

    def forward(self, x):
        skips = []
        for i, d in enumerate(self.down):
            x = d(F.max_pool2d(x, 2) if i else x)
            skips.append(x)
        for up, dbl, skip in zip(self.ups, self.dbl, reversed(skips[:-1])):
            x = dbl(torch.cat([up(x), skip], 1))
        return self.head(x)


def build(case: str, c: int, classes: int) -> nn.Module:
    if case == "lenet5":
        return LeNet5(c, classes)
    if case == "default":
        return SmallCNN(c, classes)
    if case == "resnet20":
        return ResNet(c, classes, (3, 3, 3), (16, 32, 64), "pad")
    if case == "resnet18":
        return ResNet(c, classes, (2, 2, 2, 2), (64, 128, 256, 512), "projection")
    if case == "alexnet":
        return AlexNet(c, classes)
    if case == "vgg11":
        return VGG11(c, classes)
    if case == "unet":
        return UNet(c, classes)
    raise ValueError(f"no PyTorch twin for {case!r}")


def time_step(case: str, shape, batch: int, classes: int, *, steps: int, rounds: int) -> float:
    """Median ms of one eager train step (forward, cross-entropy, backward, SGD momentum 0.9)
    on a fixed random batch, over ``rounds`` rounds of ``steps`` steps after 3 warm-up steps."""
    torch.manual_seed(0)
    h, w, c = shape
    model = build(case, c, classes).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch, c, h, w).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, classes, (batch, h, w) if case == "unet" else (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        times.append(1000 * (time.perf_counter() - t0) / steps)
    return statistics.median(times)


if __name__ == "__main__":
    case, h, w, c, b, k, steps, rounds = sys.argv[1:9]
    torch.set_num_threads(torch.get_num_threads())
    print(time_step(case, (int(h), int(w), int(c)), int(b), int(k), steps=int(steps),
                    rounds=int(rounds)))
