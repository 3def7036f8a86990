"""Issue 18, the LeNet gap: LeNet-5 at 10% density against its dense error in 10 epochs.

    nice -n 10 python experiments/sweep.py --spec=experiments/lenet_gap.py \
        --root=/tmp/l0jax_sweeps/lenet_gap --out=experiments/results/lenet_gap

Round 1 changes one setting of configs/fashion_mnist_lenet.py at a time (seed 0); the
later rounds combine what helped. Every block is a list of trials; the results table is
the trial log (experiments/results/lenet_gap/results.csv).
"""

CONFIG = "configs/fashion_mnist_lenet.py"
# The config's settings before issue 18, spelled out so the trials mean the same after
# its defaults change.
BEFORE = {"gate_learning_rate": 0.02, "dual_learning_rate": 0.05, "learning_rate": 7e-4,
          "droprate_init": -1.0}


def _one(name, **grid):
  return {"name": name, "config": CONFIG, "overrides": BEFORE, "grid": grid,
          "seeds": [0]}


def get_sweep():
  return [
      {"name": "dense", "config": CONFIG, "overrides": {**BEFORE, "gated": False},
       "seeds": [0]},
      {"name": "before", "config": CONFIG, "overrides": BEFORE, "seeds": [0]},
      # Round 1: one setting at a time.
      _one("schedule", lr_schedule=["cosine"]),
      _one("weight_lr", learning_rate=[1.5e-3, 3e-3]),
      _one("gate_lr", gate_learning_rate=[0.005, 0.05]),
      _one("dual_lr", dual_learning_rate=[0.01, 0.2]),
      _one("rescale", rescale_init=[True]),
      _one("scheme", scheme=["extragradient", "dual_primal"]),  # ran as "alternating"
      _one("restarts", dual_restarts=[False]),
      _one("noise", sample_per_example=[False]),
      # Round 2: the faster weights (learning_rate) with the settings that helped alone.
      {"name": "dense_lr", "config": CONFIG, "overrides": {**BEFORE, "gated": False},
       "grid": {"learning_rate": [1.5e-3]}, "seeds": [0]},
      _one("lr_gate", learning_rate=[1e-3, 1.5e-3, 2e-3], gate_learning_rate=[0.05]),
      _one("lr_dual", learning_rate=[1.5e-3], dual_learning_rate=[0.01, 0.02]),
      _one("lr_gate_dual", learning_rate=[1.5e-3], gate_learning_rate=[0.05],
           dual_learning_rate=[0.01, 0.02]),
      _one("lr_rescale", learning_rate=[1.5e-3], rescale_init=[True]),
      _one("lr_cosine", learning_rate=[3e-3], gate_learning_rate=[0.05],
           lr_schedule=["cosine"]),
      # Round 3: the gates' initial drop rate (0.5 in the paper: P(open) = 0.83).
      _one("droprate", droprate_init=[0.1, 0.3, 0.7]),
      # Round 4: the two that closed most of the gap (faster weights with a slower
      # dual; gates that start open), on more seeds and together.
      {"name": "lr_dual_seeds", "config": CONFIG, "overrides": BEFORE,
       "grid": {"learning_rate": [1.5e-3], "dual_learning_rate": [0.01]},
       "seeds": [1, 2]},
      _one("droprate_dual", droprate_init=[0.1], dual_learning_rate=[0.01]),
      _one("droprate_lr_dual", droprate_init=[0.1], learning_rate=[1.5e-3],
           dual_learning_rate=[0.01]),
      _one("droprate_gate_dual", droprate_init=[0.1], gate_learning_rate=[0.05],
           dual_learning_rate=[0.01]),
      # Round 5: gates that start open need a faster dual than 0.01 to reach 10%.
      _one("droprate_lr", droprate_init=[0.1], learning_rate=[1.5e-3],
           dual_learning_rate=[0.02, 0.05]),
      # The config's defaults since (droprate_lr with dual lr 0.02), on 3 seeds, and the
      # dense model at the same weight lr.
      {"name": "after", "config": CONFIG, "seeds": [0, 1, 2]},
      {"name": "dense_after", "config": CONFIG, "overrides": {"gated": False},
       "seeds": [0, 1, 2]},
  ]
