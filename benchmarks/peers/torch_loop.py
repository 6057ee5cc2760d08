"""Peer (a): the hand-written PyTorch loop people write today.

torchvision ImageFolder + DataLoader, the classic MNIST-study CNN, AdamW 1e-3,
batch 128. Usage: torch_loop.py TRAIN_DIR TEST_DIR EPOCHS THREADS. Prints one JSON line.
"""

import json
import sys
import time

t_start = time.perf_counter()
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402

train_dir, test_dir, epochs, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
torch.manual_seed(0)
tf = transforms.Compose([transforms.Grayscale(), transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
train = datasets.ImageFolder(train_dir, transform=tf)
test = datasets.ImageFolder(test_dir, transform=tf)
train_loader = torch.utils.data.DataLoader(train, batch_size=128, shuffle=True, num_workers=threads)
test_loader = torch.utils.data.DataLoader(test, batch_size=256, num_workers=threads)


def pair(c_in, c_out):
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(c_out),
            nn.Conv2d(c_out, c_out, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(c_out),
            nn.MaxPool2d(2), nn.Dropout(0.3)]


model = nn.Sequential(*pair(1, 32), *pair(32, 64), *pair(64, 128), nn.Flatten(),
                      nn.Linear(128 * 3 * 3, 512), nn.ReLU(), nn.BatchNorm1d(512), nn.Dropout(0.3),
                      nn.Linear(512, 512), nn.ReLU(), nn.BatchNorm1d(512), nn.Dropout(0.3),
                      nn.Linear(512, len(train.classes)))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
loss_fn = nn.CrossEntropyLoss()
for epoch in range(epochs):
    model.train()
    for x, y in train_loader:
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
model.eval()
correct = total = 0
with torch.no_grad():
    for x, y in test_loader:
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
print(json.dumps({"tool": "pytorch-loop", "wall_s": round(time.perf_counter() - t_start, 1),
                  "test_accuracy": round(correct / total, 4),
                  "parameters": sum(p.numel() for p in model.parameters())}))
