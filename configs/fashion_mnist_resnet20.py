"""CIFAR ResNet-20 on Fashion-MNIST, model-wise expected density <= 50%: the residual CNN
this 2-core CPU can train on real data (6 epochs, about 35 minutes on a quiet machine;
the density lands on its target within the first epoch). SGD-Nesterov lr 0.1 with
cosine decay, weight decay 5e-4, batch 128; gates Adam, starting open (drop rate 0.1:
7.30% test error against 6.46% dense; from the model's 0.5 the gated run ended at
8.36%); every convolution gated.

    python train.py --config=configs/fashion_mnist_resnet20.py --workdir=/tmp/fmnist_r20
    python train.py --config=configs/fashion_mnist_resnet20.py:runlocal --workdir=/tmp/quick
"""

from configs import default


def get_config(arg=None):
  config = default.get_config()
  config.dataset = "fashion_mnist"
  config.model = "cifar_resnet"
  config.depth = 20
  config.constraint = "model"
  config.target_density = 0.5
  config.optimizer = "nesterov"
  config.learning_rate = 0.1
  config.weight_decay = 5e-4
  config.lr_schedule = "cosine"
  config.gate_optimizer = "adam"
  config.gate_learning_rate = 0.02
  config.dual_learning_rate = 0.05
  config.batch_size = 128
  config.num_epochs = 6
  config.droprate_init = 0.1
  config.log_every_steps = 100
  config.checkpoint_every_steps = 1000
  return default.variant(config, arg)
