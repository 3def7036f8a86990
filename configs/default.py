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
  config.droprate_init = -1.0             # every gate's initial drop rate in (0, 1); < 0: the
                                          # model's (MLP: 0.2 inputs, 0.5 others; LeNet: 0.5)
  config.ops_method = "auto"              # conv/pool: "auto" (matmul forms on CPU, XLA's elsewhere) | "matmul" | "xla"

  # Sparsity formulation --------------------------------------------------------------
  config.method = "constrained"           # "constrained" | "penalized"
  config.constraint = "model"             # "model" (one constraint) | "layerwise" (one per gated layer)
  config.target_density = 0.33            # in (0, 1]; with "layerwise", the target of every layer
  config.layer_targets = ()               # "layerwise" only: one target per gated layer, e.g. "(0.5, 0.3, 0.8)"
  config.density_mode = "independent"     # "independent" (the papers') | "cascade" (what purging keeps)
  config.penalty = 0.0                    # penalized: loss + penalty * expected density (per constraint)
  config.formulation = "lagrangian"       # "lagrangian" | "augmented_lagrangian"
  config.penalty_coefficient = 0.0        # augmented Lagrangian c > 0
  config.scheme = "simultaneous"          # "simultaneous" | "alternating" | "extragradient"
  config.dual_restarts = True

  # Optimisers --------------------------------------------------------------------------
  config.optimizer = "adam"               # weights: "adam" | "sgd" | "momentum"
  config.learning_rate = 7e-4
  config.lr_schedule = "constant"         # weights: "constant" | "cosine" (decay to 0 over the run)
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
  config.steps_per_dispatch = 10          # steps per jitted call (lax.scan) between events;
                                          # 1 for conv models with ops_method="xla" on CPU (train_lib.steps_per_call)
  config.keep_checkpoints = 3
  config.seed = 0
  config.parallel = "pmap"                # "pmap" | "shard_map"
  config.progress_bar = True
  config.tensorboard = True

  # Distributed (multi-host: one process per host, same command; see l0jax/distributed.py)
  config.distributed = "auto"             # "auto" (join if env says so) | "on" | "off"
  config.coordinator_address = ""         # "host:port" of process 0; "" -> $JAX_COORDINATOR_ADDRESS or auto-detect
  config.num_processes = -1               # -1 -> $JAX_NUM_PROCESSES or auto-detect (TPU, Slurm, Open MPI)
  config.process_id = -1                  # -1 -> $JAX_PROCESS_ID or auto-detect
  config.cluster_detection_method = ""    # "" -> JAX's order; e.g. "mpi4py" for other MPI launchers
  config.distributed_init_timeout_s = 300       # give up unless every process connected by then
  config.distributed_heartbeat_timeout_s = 100  # a process silent this long is dead: all stop
  return config


def runlocal(config):
  """big_vision's idea: the same code path, small enough for a laptop CPU in a minute."""
  if config.model == "lenet5":
    config.lenet_conv_features = (10, 20)
    config.lenet_dense_features = 100
    steps = 300
  else:
    steps = 600
  config.num_train_steps = steps
  config.eval_every_steps = steps // 2
  config.checkpoint_every_steps = steps // 2
  config.log_every_steps = 50
  return config


def paper_settings(config):
  """Gallego-Posada et al. (2022), MNIST: primal Adam 7e-4 (weights and gates), dual SGD
  1e-4, batch 100, dual restarts on."""
  config.optimizer = config.gate_optimizer = "adam"
  config.learning_rate = config.gate_learning_rate = 7e-4
  config.dual_optimizer = "sgd"
  config.dual_learning_rate = 1e-4
  config.batch_size = 100
  config.dual_restarts = True
  config.num_epochs = 200
  return config


def variant(config, arg):
  """Applies a config-file argument (``configs/X.py:runlocal``)."""
  if arg == "runlocal":
    return runlocal(config)
  if arg:
    raise ValueError(f"unknown config argument {arg!r}; allowed: 'runlocal'")
  return config
