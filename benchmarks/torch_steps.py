"""A plain dense PyTorch training step of the benchmark models, timed next to l0jax's.

Used by ``step_time.py`` when PyTorch is installed (``pip install torch==2.13.0``, the
CPU build on this machine; it is not a dependency of l0jax). The step is what a PyTorch
user writes for the dense model: forward, cross-entropy, backward, Adam, with as many
threads as CPUs and subnormals flushed to zero (XLA:CPU flushes them too). PyTorch
L0 code does this and more (gate sampling, the penalty or the Lagrangian), so its
step is at least this long. PyTorch's OpenMP threads spin briefly after each step
before they sleep; against the 100+ ms that ``step_time.py`` times each runner in a
round that is noise, and ``--no_torch`` times the JAX steps without it.
"""

import os


def _cifar_resnet(nn, functional, depth: int):
  """CIFAR ResNet-(6n+2) with parameter-free (option A) shortcuts, like l0jax's."""
  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.stride, self.extra = stride, cout - cin

    def forward(self, x):
      h = functional.relu(self.bn1(self.conv1(x)))
      h = self.bn2(self.conv2(h))
      if self.stride != 1 or self.extra:
        x = x[:, :, ::self.stride, ::self.stride]
        x = functional.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
      return functional.relu(h + x)

  n = (depth - 2) // 6
  blocks, cin = [], 16
  for s, cout in enumerate((16, 32, 64)):
    for b in range(n):
      blocks.append(Block(cin, cout, 2 if s > 0 and b == 0 else 1))
      cin = cout
  return nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                       nn.ReLU(), *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                       nn.Linear(64, 10))


def _wide_resnet(nn, functional, depth: int, k: int):
  """Pre-activation WRN-d-k, like l0jax's."""
  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.shortcut = (nn.Conv2d(cin, cout, 1, stride, bias=False)
                       if stride != 1 or cin != cout else None)

    def forward(self, x):
      pre = functional.relu(self.bn1(x))
      h = self.conv2(functional.relu(self.bn2(self.conv1(pre))))
      return h + (x if self.shortcut is None else self.shortcut(pre))

  n = (depth - 4) // 6
  blocks, cin = [], 16
  for s, cout in enumerate((16 * k, 32 * k, 64 * k)):
    for b in range(n):
      blocks.append(Block(cin, cout, 2 if s > 0 and b == 0 else 1))
      cin = cout
  return nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), *blocks,
                       nn.BatchNorm2d(cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                       nn.Flatten(), nn.Linear(cin, 10))


def step_runner(model: str, batch_size: int, learning_rate: float = 7e-4):
  """``run(n)``: n dense PyTorch training steps of ``model``: "mlp" / "lenet5" (Adam,
  28x28x1) or "resnet20" / "wrn16_4" (SGD-Nesterov 0.1, weight decay 5e-4, 32x32x3)."""
  import torch
  from torch import nn

  torch.set_num_threads(os.cpu_count())
  torch.set_flush_denormal(True)
  torch.manual_seed(0)
  shape = (1, 28, 28)
  if model == "mlp":  # 784-300-100-10
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(),
                        nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))
  elif model == "lenet5":  # LeNet-5-Caffe, 20-50-800-500, VALID convolutions
    net = nn.Sequential(nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10))
  elif model == "resnet20":
    net, shape = _cifar_resnet(nn, nn.functional, 20), (3, 32, 32)
  elif model == "wrn16_4":
    net, shape = _wide_resnet(nn, nn.functional, 16, 4), (3, 32, 32)
  else:
    raise ValueError(f"unknown model {model!r}; allowed: 'mlp', 'lenet5', 'resnet20', "
                     "'wrn16_4'")
  if shape[0] == 3:
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                                weight_decay=5e-4)
  else:
    optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
  generator = torch.Generator().manual_seed(0)
  images = torch.rand((batch_size,) + shape, generator=generator)
  labels = torch.randint(0, 10, (batch_size,), generator=generator)

  def run(n: int):
    for _ in range(n):
      optimizer.zero_grad(set_to_none=True)
      loss = nn.functional.cross_entropy(net(images), labels)
      loss.backward()
      optimizer.step()
  return run


def version() -> str:
  """PyTorch's version, or "" when it is not installed."""
  try:
    import torch
  except ImportError:
    return ""
  return torch.__version__
