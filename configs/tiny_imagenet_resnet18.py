"""ResNet-18 on Tiny ImageNet (64x64, 200 classes), model-wise expected density <= 50%
(the seed's 42.3% error, 33% of the parameters after purging): SGD-Nesterov lr 0.1
x0.1 at epochs 30/60/80 over 90 epochs, weight decay 5e-4, batch 256; gates SGD lr
1.0; dual lr 8e-4. Tiny ImageNet is prepared from its official folder (README,
"Datasets").

    python train.py --config=configs/tiny_imagenet_resnet18.py --workdir=/tmp/r18
"""

from configs import default


def get_config(arg=None):
  config = default.get_config()
  config.dataset = "tiny_imagenet"
  config.eval_split = "validation"
  config.model = "resnet"
  config.depth = 18
  config.constraint = "model"
  config.target_density = 0.5
  config.optimizer = "nesterov"
  config.learning_rate = 0.1
  config.gate_optimizer = "sgd"
  config.gate_learning_rate = 1.0
  config.weight_decay = 5e-4
  config.lr_schedule = "step"
  config.lr_milestones = (30, 60, 80)
  config.lr_decay_factor = 0.1
  config.dual_learning_rate = 8e-4
  config.batch_size = 256
  config.num_epochs = 90
  config.checkpoint_every_steps = 2000
  return default.variant(config, arg)
