"""Issue 16, Dep-L0 against independent gates on a residual CNN: CIFAR ResNet-20 on
Fashion-MNIST at model-wise 50% (configs/fashion_mnist_resnet20.py, 6 epochs).

    nice -n 10 python experiments/sweep.py --spec=experiments/depl0_resnet20.py \\
        --root=/tmp/l0jax_sweeps/depl0_resnet20 --out=experiments/results/depl0_resnet20

The Dep-L0 arms take the paper's ResNet-56 generator settings (constant input of 16
forward / 64 backward, Adam lr 1e-3, biases N(3, 0.01^2)); everything else, the
constraint and its dual lr included, is the config's, as for the independent arm. One
run takes about 10 minutes on this 2-core CPU when it is quiet (15-40 shared).
"""

CONFIG = "configs/fashion_mnist_resnet20.py"
SEEDS = [0, 1, 2]
BACKWARD_SEEDS = [0, 1, 2]
DEP = {"gate_learning_rate": 1e-3, "dep_bias_init": "paper"}


def get_sweep():
  return [
      {"name": "independent", "config": CONFIG, "seeds": SEEDS},
      {"name": "dep_forward", "config": CONFIG, "seeds": SEEDS,
       "overrides": {"gate_source": "dep_forward", "dep_input_size": 16, **DEP}},
      {"name": "dep_backward", "config": CONFIG, "seeds": BACKWARD_SEEDS,
       "overrides": {"gate_source": "dep_backward", "dep_input_size": 64, **DEP}},
  ]
