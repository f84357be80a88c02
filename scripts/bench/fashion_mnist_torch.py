"""PyTorch twin of `layerlens train zoo:seed_cnn --data fashion-mnist --epochs 3`:
the seed CNN (conv 32 3x3 ReLU, max-pool 2, conv 64 3x3 ReLU, max-pool 2, flatten,
dense 10), cross-entropy, Adam lr 1e-3, batch 64, shuffled, 3 epochs on the 60 000
training images, test accuracy after each epoch. Prints the wall time of the whole
loop (evaluations included). Threads: $THREADS (default: all cores).

    ~/.cache/layerlens/refenv/bin/python scripts/bench/fashion_mnist_torch.py
"""
import gzip
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DIR = "/usr/share/datasets/fashion-mnist"
torch.set_num_threads(int(os.environ.get("THREADS", os.cpu_count())))
torch.manual_seed(0)


def idx(name, offset):
    with gzip.open(os.path.join(DIR, name)) as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def images(name):
    return torch.from_numpy(idx(name, 16).reshape(-1, 1, 28, 28).astype(np.float32) / 255.0)


def labels(name):
    return torch.from_numpy(idx(name, 8).astype(np.int64))


xtr, ytr = images("train-images-idx3-ubyte.gz"), labels("train-labels-idx1-ubyte.gz")
xte, yte = images("t10k-images-idx3-ubyte.gz"), labels("t10k-labels-idx1-ubyte.gz")
model = nn.Sequential(
    nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(1600, 10),
)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
t0 = time.perf_counter()
for epoch in range(3):
    model.train()
    perm = torch.randperm(len(xtr))
    total, correct, loss_sum = 0, 0, 0.0
    for i in range(0, len(xtr), 64):
        b = perm[i:i + 64]
        opt.zero_grad(set_to_none=True)
        out = model(xtr[b])
        loss = F.cross_entropy(out, ytr[b])
        loss.backward()
        opt.step()
        loss_sum += loss.item() * len(b)
        correct += (out.argmax(1) == ytr[b]).sum().item()
        total += len(b)
    model.eval()
    with torch.inference_mode():
        acc = sum((model(xte[i:i + 500]).argmax(1) == yte[i:i + 500]).sum().item()
                  for i in range(0, len(xte), 500)) / len(xte)
    print(f"epoch {epoch + 1}: train loss {loss_sum / total:.4f} train acc {correct / total:.4f} "
          f"test acc {acc:.4f}", flush=True)
print(f"wall {time.perf_counter() - t0:.1f} s (torch {torch.__version__}, "
      f"{torch.get_num_threads()} threads)")
