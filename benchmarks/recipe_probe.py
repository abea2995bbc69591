"""Short, same-seed runs that check what the training recipe's defaults buy, on the real data.

    .venv/bin/python benchmarks/recipe_probe.py --data-dir /tmp/cifar10-jpg --epochs 2 --width 0.5 \
        --name recipe-probe-2ep

Arms (each a fresh model, seed 0, bf16 autocast on the CPU, batch 500, peak lr 0.2, no label
smoothing, no Cutout, so only the listed differences remain):

- `before`: edgekit's defaults until 2026-12-02: He-normal (fan_out) conv weights, each block's
  last BN scale zero-initialised, no weight decay on BN parameters and biases, warm-up from 0.
- `after`: today's defaults: torch's default initialisation, weight decay on every parameter,
  warm-up from 0.2x over the first 20 % of steps (the published triangle).
- `independent`: a minimal loop written apart from edgekit (kuangliu's ResNet18 at the same width,
  airbench's schedule and augmentation), so a bug shared by both edgekit arms would show.

Writes benchmarks/results/<name>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from _repo import ROOT, script_command  # noqa: E402  (benchmarks/ is this script's directory; puts edgekit on the path)

from edgekit.artifacts import atomic_write_text, library_versions, machine_info
from edgekit.config import DataConfig, DataSource, TrainConfig
from edgekit.data import DataSplits, load_data
from edgekit.model import BasicBlock, ModelSpec, build_model
from edgekit.report import markdown_table
from edgekit.train import train_model

RESULTS = ROOT / "benchmarks/results"


def he_normal_zero_init(model: nn.Module) -> nn.Module:
    """The initialisation edgekit used before: He-normal fan_out convs, zero last BN scale per block."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    for module in model.modules():
        if isinstance(module, BasicBlock):
            nn.init.zeros_(module.bn2.weight)
    return model


def edgekit_arm(data: DataSplits, args, before: bool) -> list[float]:
    config = TrainConfig(epochs=args.epochs, batch_size=500, lr=0.2, label_smoothing=0.0, cutout=0, width=args.width,
                         cpu_bf16=True, threads=args.threads)
    if before:
        config.warmup_epochs, config.warmup_start, config.decay_norm_and_bias = 0.2 * args.epochs, 0.0, False
    model = build_model(ModelSpec.from_width(args.width, data.num_classes), seed=0)
    if before:
        he_normal_zero_init(model)
    result = train_model(model, data, config)
    return [h["val_accuracy"] for h in result.history]


class _KuangliuBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.c2, self.b2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = (nn.Sequential() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)))

    def forward(self, x):
        return F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))) + self.shortcut(x))


class _KuangliuResNet18(nn.Module):
    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0])
        layers, cin = [], widths[0]
        for index, cout in enumerate(widths):
            layers += [_KuangliuBlock(cin, cout, 1 if index == 0 else 2), _KuangliuBlock(cout, cout, 1)]
            cin = cout
        self.layers, self.fc = nn.Sequential(*layers), nn.Linear(cin, 10)

    def forward(self, x):
        return self.fc(F.adaptive_avg_pool2d(self.layers(F.relu(self.bn(self.stem(x)))), 1).flatten(1))


def independent_arm(data: DataSplits, args) -> list[float]:
    torch.manual_seed(0)
    spec = ModelSpec.from_width(args.width)
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    net = _KuangliuResNet18(spec.stage_channels).to(memory_format=torch.channels_last)
    x_all, y_all = (data.train_x.float() / 255 - mean) / std, data.train_y
    batch = 500
    steps = len(y_all) // batch * args.epochs
    schedule = np.interp(np.arange(1 + steps), [0, int(0.2 * steps), steps], [0.2, 1, 0])
    optimizer = torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.__getitem__)
    val_x = (data.val_x.float() / 255 - mean) / std
    accuracies = []
    for _ in range(args.epochs):
        net.train()
        flip = torch.rand(len(x_all)) < 0.5
        padded = F.pad(torch.where(flip.view(-1, 1, 1, 1), x_all.flip(-1), x_all), (4,) * 4, mode="reflect")
        off_y, off_x = torch.randint(0, 9, (len(x_all),)), torch.randint(0, 9, (len(x_all),))
        order = torch.randperm(len(x_all))
        for step in range(len(y_all) // batch):
            index = order[step * batch:(step + 1) * batch].tolist()
            inputs = torch.stack([padded[j, :, off_y[j]:off_y[j] + 32, off_x[j]:off_x[j] + 32] for j in index])
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = net(inputs.contiguous(memory_format=torch.channels_last))
            loss = F.cross_entropy(logits.float(), y_all[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        net.eval()
        with torch.no_grad():
            accuracies.append((net(val_x).argmax(1) == data.val_y).float().mean().item())
    return accuracies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--name", default="recipe-probe")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--arms", default="before,after,independent")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_data(DataConfig(source=DataSource.folder, data_dir=str(args.data_dir)))
    arms = {"before": lambda: edgekit_arm(data, args, before=True),
            "after": lambda: edgekit_arm(data, args, before=False),
            "independent": lambda: independent_arm(data, args)}
    results = {}
    for name in args.arms.split(","):
        start = time.perf_counter()
        results[name] = {"val_accuracy_per_epoch": arms[name](), "seconds": time.perf_counter() - start,
                         "load_average_after": os.getloadavg()}
        print(name, results[name], flush=True)
    write(args, results)


def write(args, results: dict) -> None:
    payload = {"name": args.name, "epochs": args.epochs, "width": args.width, "threads": args.threads,
               "arms": results, "machine": machine_info(), "versions": library_versions(),
               "command": script_command()}
    atomic_write_text(RESULTS / f"{args.name}.json", json.dumps(payload, indent=2) + "\n")
    rows = [[name, *(f"{100 * a:.2f} %" for a in arm["val_accuracy_per_epoch"])] for name, arm in results.items()]
    columns = ["arm", *(f"val after epoch {e + 1}" for e in range(args.epochs))]
    atomic_write_text(RESULTS / f"{args.name}.md", f"# {args.name}\n\n{__doc__}\n" + markdown_table(columns, rows))


if __name__ == "__main__":
    main()
