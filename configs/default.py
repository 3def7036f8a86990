"""Defaults shared by every l0jax config; experiment configs import and override them.

Every knob of the trainer is a field here, so `--config.field=value` on the command line
changes it (the command line always wins: nothing else is merged afterwards). Every
field is checked before a run starts (`l0jax.train_lib.validate_config`), and every
field is either fixed for a run or allowed to change when it resumes
(`l0jax.workdir.RESUMABLE_FIELDS` / `FIXED_FIELDS`; a new field must be added to one).
"""

import ml_collections


def get_config():
  config = ml_collections.ConfigDict()

  # Data ------------------------------------------------------------------------------
  config.dataset = "fashion_mnist"        # any TFDS image-classification dataset prepared (array_record) in data_dir
  config.data_dir = ""                    # TFDS data dir; "" -> $TFDS_DATA_DIR or ~/tensorflow_datasets
  config.idx_dir = ""                     # (fashion_)mnist: IDX files to prepare from; "" -> the Debian package's folder
  config.fake_data = False                # synthetic images of the dataset's shape, classes and split sizes
  config.train_split = "train"            # any TFDS split string, e.g. "train[:90%]"
  config.eval_split = "test"
  # Preprocessing (l0jax/data/transforms.py); "auto"/0/() pick the dataset's defaults:
  config.augment = "auto"                 # "auto" | "none" | "flip" | "pad_crop" | "pad_crop_flip" | "random_resized_crop" | "random_resized_crop_flip"
  config.image_size = 0                   # model input side; 0: the images' own (224 for variable-size images)
  config.crop_padding = 4                 # pad_crop: pixels of zero padding per side
  config.rrc_scale = (0.08, 1.0)          # random_resized_crop: range of the crop's area fraction
  config.eval_resize = 0                  # resized datasets: shorter side before the centre crop; 0: image_size * 256 / 224
  config.mean = ()                        # per-channel mean / std on the [0, 1] scale; (): the dataset's
  config.std = ()
  config.data_workers = -1                # processes decoding/augmenting ahead; -1: one per core when images are resized, else 0

  # Model -----------------------------------------------------------------------------
  config.model = "mlp"                    # "mlp" | "lenet5" | "wrn" | "resnet" | "cifar_resnet" | "vgg"
  config.gated = True                     # False: the same model with plain nn.Dense/nn.Conv
  config.mlp_features = (300, 100)
  config.lenet_conv_features = (20, 50)
  config.lenet_dense_features = 500
  config.unstructured = False             # one gate per weight instead of per neuron/channel
  config.sample_per_example = True        # gate noise per example (else once per device batch)
  config.test_gate = "median"             # "median" | "eq13"
  config.rescale_init = False             # kernels * 1/(1 - droprate_init) at init
  config.droprate_init = -1.0             # every gate's initial drop rate in (0, 1); < 0: the
                                          # model's (MLP: 0.2 inputs, 0.5 others; LeNet, ResNets, VGG: 0.5; WRN: 0.3)
  config.ops_method = "auto"              # conv/pool: "auto" (matmul forms on CPU, XLA's elsewhere) | "matmul" | "xla"
  # Residual CNNs ("wrn" | "resnet" | "cifar_resnet" | "vgg"; l0jax/models/):
  config.depth = 28                       # wrn: 6n+4; resnet: 18/34/50; cifar_resnet: 6n+2; vgg: 11/13/16/19
  config.widen_factor = 10                # wrn: k
  config.width_scale = 1.0                # multiplies every CNN width (tiny models for tests / runlocal)
  config.dropout = 0.0                    # wrn: between the convolutions of a block
  config.bn_momentum = 0.9                # BatchNorm running statistics (PyTorch's 0.1)
  config.dtype = "float32"                # compute dtype: "float32" | "bfloat16" (params, gates, BN stats, duals stay float32)

  # Sparsity formulation --------------------------------------------------------------
  config.method = "constrained"           # "constrained" | "penalized"
  config.constraint = "model"             # "model" (one constraint) | "layerwise" (one per gated layer)
  config.target_density = 0.33            # in (0, 1]; with "layerwise", the target of every layer
  config.layer_targets = ()               # "layerwise" only: one target per gated layer, e.g. "(0.5, 0.3, 0.8)"
  config.density_mode = "independent"     # "independent" (the papers') | "cascade" (what purging keeps) | "macs" (expected MACs)
  config.penalty = 0.0                    # penalized (needs > 0): loss + penalty * expected density (per constraint)
  config.formulation = "lagrangian"       # "lagrangian" | "augmented_lagrangian"
  config.penalty_coefficient = 0.0        # augmented Lagrangian c > 0
  config.scheme = "simultaneous"          # "simultaneous" | "dual_primal" | "primal_dual" | "extragradient"
  config.dual_restarts = True

  # Optimisers --------------------------------------------------------------------------
  config.optimizer = "adam"               # weights: "adam" | "sgd" | "momentum" | "nesterov"
  config.learning_rate = 7e-4
  config.lr_schedule = "constant"         # weights: "constant" | "cosine" (decay to 0 over the run) | "step"
  config.lr_milestones = ()               # "step": epochs where the lr is multiplied by lr_decay_factor
  config.lr_decay_factor = 0.2
  config.momentum = 0.9                   # for "momentum" / "nesterov"; in [0, 1)
  config.weight_decay = 0.0               # L2 on conv/dense kernels only (never gates, biases, BN)
  config.label_smoothing = 0.0
  config.gate_optimizer = "adam"          # log_alpha: "adam" | "sgd" | "momentum" | "nesterov"
  config.gate_learning_rate = 7e-4
  config.dual_optimizer = "sgd"           # multipliers: "sgd" | "nupi" (no momentum on duals)
  config.dual_learning_rate = 1e-4
  config.nupi_kp = 0.0                    # nuPI proportional gain (0 = plain SGD)

  # Schedule, logging, checkpoints ----------------------------------------------------
  config.batch_size = 100                 # global batch, summed over all devices and hosts
  config.num_epochs = 10
  config.num_train_steps = -1             # >= 1 overrides num_epochs; -1: train num_epochs
  config.log_every_steps = 100
  config.log_egf = False                  # log EGF and L1/L2 gradient norms (l0jax.science.egf): one more backward pass a step
  config.eval_every_steps = -1            # -1: once per epoch; 0: only at the end
  config.checkpoint_every_steps = 1000
  config.steps_per_dispatch = 10          # steps per jitted call (lax.scan) between events;
                                          # 1 for conv models with ops_method="xla" on CPU (train_lib.steps_per_call)
  config.keep_checkpoints = 3             # verified checkpoints kept (older ones deleted only then)
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
  config.distributed_heartbeat_timeout_s = 30   # a process silent this long is dead: all stop
  return config


CNNS = ("wrn", "resnet", "cifar_resnet", "vgg")
RUNLOCAL_DEPTH = {"wrn": 10, "resnet": 18, "cifar_resnet": 8, "vgg": 11}


def runlocal(config):
  """big_vision's idea: the same code path, small enough for a laptop CPU in a minute.

  CNN configs keep their model family but shrink depth and widths, evaluate on the
  first 256 examples and train on 64x64 crops of ImageNet-sized images; add
  ``--config.fake_data=True`` where the dataset is not prepared.
  """
  if config.model == "lenet5":
    config.lenet_conv_features = (10, 20)
    config.lenet_dense_features = 100
    steps = 300
  elif config.model in CNNS:
    config.depth = RUNLOCAL_DEPTH[config.model]
    config.widen_factor = 1
    config.width_scale = 0.25
    config.batch_size = 32
    config.eval_split = config.eval_split.split("[")[0] + "[:256]"
    if config.dataset in ("imagenet2012", "imagenette"):
      config.image_size = 64
    config.lr_schedule = "constant" if config.lr_schedule == "step" else config.lr_schedule
    steps = 20
  else:
    steps = 600
  config.num_train_steps = steps
  config.eval_every_steps = steps // 2
  config.checkpoint_every_steps = steps // 2
  config.log_every_steps = min(50, steps // 4)
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
