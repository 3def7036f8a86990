"""VGG-16-BN on CIFAR-10 with independent hard-concrete gates on every convolution,
model-wise expected density <= 50%, l0jax's recipe: SGD-Nesterov lr 0.1, cosine over
200 epochs, weight decay 5e-4, batch 128; gates Adam 1e-3 (as Dep-L0); dual lr 1e-3.
The L0-HC arm of the Dep-L0 comparison (configs/cifar10_vgg16_depl0.py:hc) trains
with the Dep-L0 code's recipe instead.

    python train.py --config=configs/cifar10_vgg16.py --workdir=/tmp/vgg
"""

from configs import default


def cnn_cifar(model: str, depth: int):
  config = default.get_config()
  config.dataset = "cifar10"
  config.model, config.depth = model, depth
  config.constraint = "model"
  config.target_density = 0.5
  config.optimizer = "nesterov"
  config.learning_rate = 0.1
  config.weight_decay = 5e-4
  config.lr_schedule = "cosine"
  config.gate_optimizer = "adam"
  config.gate_learning_rate = 1e-3
  config.dual_learning_rate = 1e-3
  config.batch_size = 128
  config.num_epochs = 200
  config.checkpoint_every_steps = 2000
  return config


def get_config(arg=None):
  return default.variant(cnn_cifar("vgg", 16), arg)
