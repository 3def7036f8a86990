"""784-300-100 MLP on MNIST with the paper's settings (Gallego-Posada et al., 2022):
expected model density <= 33%, primal Adam 7e-4, dual SGD 1e-4, batch 100, restarts on.

MNIST is not shipped offline: set --config.idx_dir to a folder with the MNIST IDX files
(or --config.data_dir to a TFDS dir where mnist is prepared).
"""

from configs import default


def get_config(arg=None):
  config = default.paper_settings(default.get_config())
  config.dataset = "mnist"
  config.model = "mlp"
  config.target_density = 0.33
  return default.variant(config, arg)
