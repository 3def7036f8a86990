"""784-300-100 MLP on MNIST with the paper's settings (Gallego-Posada et al., 2022):
expected model density <= 33%, primal Adam 7e-4, dual SGD 1e-4, batch 100, restarts on.

MNIST is not shipped offline: set --config.idx_dir to a folder with the MNIST IDX files
(or --config.data_dir to a TFDS dir where mnist is prepared).
"""

from configs import default


def get_config(arg=None):
  config = default.get_config()
  config.dataset = "mnist"
  config.model = "mlp"
  config.target_density = 0.33
  config.learning_rate = 7e-4
  config.gate_learning_rate = 7e-4
  config.dual_learning_rate = 1e-4
  config.batch_size = 100
  config.dual_restarts = True
  config.num_epochs = 200
  if arg == "runlocal":
    config.num_train_steps = 600
    config.eval_every_steps = 300
    config.checkpoint_every_steps = 300
    config.log_every_steps = 50
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; allowed: 'runlocal'")
  return config
