"""Defaults shared by every l0jax config; experiment configs import and override them.

Every knob of the trainer is a field here, so `--config.field=value` on the command line
changes it (the command line always wins: nothing else is merged afterwards).
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()

  # Data ------------------------------------------------------------------------------
  config.dataset = "fashion_mnist"        # "fashion_mnist" | "mnist"
  config.data_dir = ""                    # TFDS data dir; "" -> $TFDS_DATA_DIR or ~/tensorflow_datasets
  config.idx_dir = ""                     # IDX files to prepare from; "" -> the Debian package's folder
  config.train_split = "train"
  config.eval_split = "test"

  # Model -----------------------------------------------------------------------------
  config.model = "mlp"                    # "mlp" | "lenet5"
  config.gated = True                     # False: the same model with plain nn.Dense/nn.Conv
  config.mlp_features = (300, 100)
  config.lenet_conv_features = (20, 50)
  config.lenet_dense_features = 500
  config.unstructured = False             # one gate per weight instead of per neuron/channel
  config.sample_per_example = True        # gate noise per example (else once per device batch)
  config.test_gate = "median"             # "median" | "eq13"
  config.rescale_init = False             # kernels * 1/(1 - droprate_init) at init

  # Sparsity formulation --------------------------------------------------------------
  config.method = "constrained"           # "constrained" | "penalized"
  config.constraint = "model"             # "model" (one constraint) | "layerwise" (one per gated layer)
  config.target_density = 0.33            # in (0, 1]; with "layerwise", the target of every layer
  config.layer_targets = ()               # "layerwise" only: one target per gated layer, e.g. "(0.5, 0.3, 0.8)"
  config.penalty = 0.0                    # penalized: loss + penalty * expected density (per constraint)
  config.formulation = "lagrangian"       # "lagrangian" | "augmented_lagrangian"
  config.penalty_coefficient = 0.0        # augmented Lagrangian c > 0
  config.scheme = "simultaneous"          # "simultaneous" | "alternating" | "extragradient"
  config.dual_restarts = True

  # Optimisers --------------------------------------------------------------------------
  config.optimizer = "adam"               # weights: "adam" | "sgd" | "momentum"
  config.learning_rate = 7e-4
  config.momentum = 0.9                   # for "momentum"
  config.gate_optimizer = "adam"          # log_alpha: "adam" | "sgd" | "momentum"
  config.gate_learning_rate = 7e-4
  config.dual_optimizer = "sgd"           # multipliers: "sgd" | "nupi" (no momentum on duals)
  config.dual_learning_rate = 1e-4
  config.nupi_kp = 0.0                    # nuPI proportional gain (0 = plain SGD)

  # Schedule, logging, checkpoints ----------------------------------------------------
  config.batch_size = 100                 # global batch, summed over all devices and hosts
  config.num_epochs = 10
  config.num_train_steps = -1             # > 0 overrides num_epochs
  config.log_every_steps = 100
  config.eval_every_steps = -1            # -1: once per epoch; 0: only at the end
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.seed = 0
  config.parallel = "pmap"                # "pmap" | "shard_map"
  config.progress_bar = True
  config.tensorboard = True
  return config
