"""LeNet-5-Caffe on Fashion-MNIST, expected model density <= 10%.

    python train.py --config=configs/fashion_mnist_lenet.py --workdir=/tmp/fmnist_lenet
"""

from configs import default


def get_config(arg=None):
  config = default.get_config()
  config.dataset = "fashion_mnist"
  config.model = "lenet5"
  config.target_density = 0.10
  config.dual_learning_rate = 1e-2
  if arg == "runlocal":
    config.lenet_conv_features = (10, 20)
    config.lenet_dense_features = 100
    config.num_train_steps = 300
    config.eval_every_steps = 150
    config.checkpoint_every_steps = 150
    config.log_every_steps = 50
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; allowed: 'runlocal'")
  return config
