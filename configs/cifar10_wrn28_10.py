"""WRN-28-10 on CIFAR-10, layer-wise expected density <= 70% (Gallego-Posada et al.,
2022: 4.10% error): SGD with Nesterov momentum, lr 0.1 x0.2 at epochs 60/120/160, 200
epochs, batch 128, weight decay 5e-4; gates SGD-Nesterov lr 6.0; dual lr 7e-4;
gates start open with probability 0.7.

    python train.py --config=configs/cifar10_wrn28_10.py --workdir=/tmp/wrn
    python train.py --config=configs/cifar10_wrn28_10.py:runlocal --config.fake_data=True --workdir=/tmp/quick
"""

from configs import default


def wrn_cifar(dataset: str):
  config = default.get_config()
  config.dataset = dataset
  config.model = "wrn"
  config.depth, config.widen_factor = 28, 10
  config.droprate_init = 0.3
  config.constraint = "layerwise"
  config.target_density = 0.7
  config.optimizer = config.gate_optimizer = "nesterov"
  config.learning_rate, config.gate_learning_rate = 0.1, 6.0
  config.momentum = 0.9
  config.weight_decay = 5e-4
  config.lr_schedule = "step"
  config.lr_milestones = (60, 120, 160)
  config.lr_decay_factor = 0.2
  config.dual_learning_rate = 7e-4
  config.batch_size = 128
  config.num_epochs = 200
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2000
  return config


def get_config(arg=None):
  return default.variant(wrn_cifar("cifar10"), arg)
