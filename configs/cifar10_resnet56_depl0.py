"""CIFAR ResNet-56 on CIFAR-10 with Dep-L0 gates (Li & Ji 2021) on the layers the
paper's code gates, the stem and each block's first convolution (28 layers,
``gate_block_outputs=False``; the block outputs that join the residual sums stay
dense), model-wise expected density <= 50%. Arms and arguments as
configs/cifar10_vgg16_depl0.py (``forward`` | ``backward`` | ``hc``, ``constrained`` |
``penalized``, ``runlocal``).

The paper's settings: generator input 16 (forward) or 64 (backward); lambda 5e-7
(forward), 1e-6 (backward), 5e-7 (L0-HC), applied as ``penalty = lambda * 413,872``
(the 28 gated convolutions' sparsifiable parameters) on the paper's cost
(``density_mode="dep_l0"``, along the call order: each convolution's inputs counted as
the previous gated convolution's outputs, as the paper's chain does; the residual sums
are not modelled). Training as train_resnet56.py: the recipe of
configs/cifar10_vgg16_depl0.py with lr 0.1, x0.1 at each milestone. Unlike the
reference, shortcuts are option A (parameter-free, as configs/cifar10_resnet56.py),
not 1x1 convolutions.

    python train.py --config=configs/cifar10_resnet56_depl0.py --workdir=/tmp/r56_dep
    python train.py --config=configs/cifar10_resnet56_depl0.py:backward,penalized --workdir=...
    python train.py --config=configs/cifar10_resnet56_depl0.py:runlocal --workdir=/tmp/quick
"""

from configs import cifar10_vgg16, cifar10_vgg16_depl0


def get_config(arg=None):
  config = cifar10_vgg16_depl0.reference_recipe(
      cifar10_vgg16.cnn_cifar("cifar_resnet", 56), learning_rate=0.1, lr_decay_factor=0.1)
  config.gate_block_outputs = False
  return cifar10_vgg16_depl0.depl0_variant(
      config, arg, num_sparsifiable=413_872,
      lambdas={"forward": 5e-7, "backward": 1e-6, "hc": 5e-7},
      input_sizes={"forward": 16, "backward": 64})
