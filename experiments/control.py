"""Issue 18, the control sweep on Fashion-MNIST: constrained (density targets) against
penalized (penalties that span the same densities) and dense, same seeds.

    nice -n 10 python experiments/sweep.py --spec=experiments/control.py \
        --root=/tmp/l0jax_sweeps/control --out=experiments/results/control

10 epochs: MLP targets {0.1, 0.2, 0.33, 0.5, 0.7} and LeNet-5 targets {0.1, 0.33, 0.5},
3 seeds each, against penalized runs and the dense model (3 seeds); 30 epochs:
constrained targets {0.1, 0.33, 0.5}, seed 0, both models.

The penalties are what experiments/calibrate_penalty.py chose (seed 0, 10 epochs; the
runs and their cost are in experiments/results/control/*_penalties.json):

    nice -n 10 python experiments/calibrate_penalty.py \
        --config=configs/fashion_mnist_mlp.py --targets=0.7,0.5,0.33,0.2,0.1 \
        --root=/tmp/l0jax_sweeps/control --block=mlp_penalized_10ep --lo=1e-3 --hi=10 \
        --step=geometric --out=experiments/results/control/mlp_penalties.json
    nice -n 10 python experiments/calibrate_penalty.py \
        --config=configs/fashion_mnist_lenet.py --targets=0.5,0.33,0.1 \
        --root=/tmp/l0jax_sweeps/control --block=lenet_penalized_10ep --lo=1e-3 --hi=10 \
        --out=experiments/results/control/lenet_penalties.json

(the LeNet calibration ran 4 geometric steps, then was restarted with the interpolating
steps, which reused those runs: 10 runs in all for 3 targets.)
"""

MODELS = {
    "mlp": ("configs/fashion_mnist_mlp.py", [0.1, 0.2, 0.33, 0.5, 0.7]),
    "lenet": ("configs/fashion_mnist_lenet.py", [0.1, 0.33, 0.5]),
}
PENALTIES = {  # calibrated, see the module doc
    "mlp": [0.178, 0.392, 0.866, 1.78, 4.21],
    "lenet": [4.68, 0.561, 0.276],
}
SEEDS = [0, 1, 2]


def get_sweep():
  blocks = []
  for model, (config, targets) in MODELS.items():
    blocks.append({"name": f"{model}_constrained_10ep", "config": config,
                   "grid": {"target_density": targets}, "seeds": SEEDS})
    if PENALTIES[model]:  # once calibrated
      blocks.append({"name": f"{model}_penalized_10ep", "config": config,
                     "overrides": {"method": "penalized"},
                     "grid": {"penalty": PENALTIES[model]}, "seeds": SEEDS})
    blocks += [
        {"name": f"{model}_dense_10ep", "config": config, "overrides": {"gated": False},
         "seeds": SEEDS},
        {"name": f"{model}_constrained_30ep", "config": config,
         "overrides": {"num_epochs": 30}, "grid": {"target_density": [0.1, 0.33, 0.5]},
         "seeds": [0]},
    ]
  # LeNet at 30 epochs drifted below its 33% target with "<=" (the multiplier at 0,
  # gates kept closing). "==" with plain gradient ascent on the multiplier oscillates
  # (density 15-95%); the augmented Lagrangian's c/2 (g - t)^2 damps it.
  blocks.append({"name": "lenet_constrained_eq_30ep", "config": MODELS["lenet"][0],
                 "overrides": {"num_epochs": 30, "constraint_kind": "eq"},
                 "grid": {"target_density": [0.33]}, "seeds": [0]})
  blocks.append({"name": "lenet_constrained_eq_al_30ep", "config": MODELS["lenet"][0],
                 "overrides": {"num_epochs": 30, "constraint_kind": "eq",
                               "formulation": "augmented_lagrangian",
                               "target_density": 0.33},
                 "grid": {"penalty_coefficient": [1.0, 10.0]}, "seeds": [0]})
  blocks.append({"name": "lenet_constrained_eq_al10_30ep", "config": MODELS["lenet"][0],
                 "overrides": {"num_epochs": 30, "constraint_kind": "eq",
                               "formulation": "augmented_lagrangian",
                               "penalty_coefficient": 10.0},
                 "grid": {"target_density": [0.1, 0.5]}, "seeds": [0]})
  return blocks
