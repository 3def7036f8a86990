"""ResNet-50 on ImageNet, model-wise expected density <= 50% (Gallego-Posada et al.,
2022: 27.7% error): SGD-Nesterov lr 0.1 x0.1 at epochs 30/60/80 over 90 epochs,
weight decay 1e-4, global batch 256 (scale the lr with it), bfloat16 compute; gates
SGD lr 1.0, starting open with probability 0.95; dual lr 3e-4.

    python train.py --config=configs/imagenet2012_resnet50.py --workdir=gs://.../r50
"""

from configs import default


def get_config(arg=None):
  config = default.get_config()
  config.dataset = "imagenet2012"
  config.eval_split = "validation"
  config.model = "resnet"
  config.depth = 50
  config.droprate_init = 0.05
  config.constraint = "model"
  config.target_density = 0.5
  config.optimizer = "nesterov"
  config.learning_rate = 0.1
  config.gate_optimizer = "sgd"
  config.gate_learning_rate = 1.0
  config.weight_decay = 1e-4
  config.lr_schedule = "step"
  config.lr_milestones = (30, 60, 80)
  config.lr_decay_factor = 0.1
  config.dual_learning_rate = 3e-4
  config.batch_size = 256
  config.num_epochs = 90
  config.dtype = "bfloat16"
  config.log_every_steps = 200
  config.checkpoint_every_steps = 5000
  return default.variant(config, arg)
