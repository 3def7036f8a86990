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


def step_runner(model: str, batch_size: int, learning_rate: float = 7e-4):
  """``run(n)``: n dense PyTorch training steps of ``model`` ("mlp" or "lenet5")."""
  import torch
  from torch import nn

  torch.set_num_threads(os.cpu_count())
  torch.set_flush_denormal(True)
  torch.manual_seed(0)
  if model == "mlp":  # 784-300-100-10
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(),
                        nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))
  elif model == "lenet5":  # LeNet-5-Caffe, 20-50-800-500, VALID convolutions
    net = nn.Sequential(nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                        nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10))
  else:
    raise ValueError(f"unknown model {model!r}; allowed: 'mlp', 'lenet5'")
  optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
  generator = torch.Generator().manual_seed(0)
  images = torch.rand(batch_size, 1, 28, 28, generator=generator)
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
