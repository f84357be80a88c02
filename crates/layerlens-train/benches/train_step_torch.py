"""PyTorch twin of benches/train_step.rs: one training step of the seed CNN
(batch 64, forward + cross-entropy, backward, Adam), same phases, same output
format. Thread count from $THREADS (default: all cores), like candle's default."""
import os
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

threads = int(os.environ.get("THREADS", os.cpu_count()))
torch.set_num_threads(threads)
steps = int(os.environ.get("STEPS", "30"))

model = nn.Sequential(
    nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(1600, 10),
)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
x = torch.rand(64, 1, 28, 28)
y = torch.arange(64) % 10
phases = {"forward+loss": [], "backward": [], "optimizer": [], "step": []}
for i in range(steps + 5):
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.item()
    t1 = time.perf_counter()
    loss.backward()
    t2 = time.perf_counter()
    opt.step()
    t3 = time.perf_counter()
    if i >= 5:
        phases["forward+loss"].append((t1 - t0) * 1e3)
        phases["backward"].append((t2 - t1) * 1e3)
        phases["optimizer"].append((t3 - t2) * 1e3)
        phases["step"].append((t3 - t0) * 1e3)
for name, v in phases.items():
    v.sort()
    print(f"pytorch {name} median_ms={v[len(v) // 2]:.2f} min_ms={v[0]:.2f}")
print(f"pytorch version={torch.__version__} threads={threads}")
