"""784-300-100 MLP on Fashion-MNIST, expected model density <= 33%.

    python train.py --config=configs/fashion_mnist_mlp.py --workdir=/tmp/fmnist_mlp
    python train.py --config=configs/fashion_mnist_mlp.py:runlocal --workdir=/tmp/quick
"""

from configs import default


def get_config(arg=None):
  config = default.get_config()
  config.dataset = "fashion_mnist"
  config.model = "mlp"
  config.target_density = 0.33
  config.dual_learning_rate = 1e-2
  if arg == "runlocal":
    config.num_train_steps = 600
    config.eval_every_steps = 300
    config.checkpoint_every_steps = 300
    config.log_every_steps = 50
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; allowed: 'runlocal'")
  return config
