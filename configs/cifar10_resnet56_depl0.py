"""CIFAR ResNet-56 on CIFAR-10 with Dep-L0 gates (Li & Ji 2021) on every convolution,
model-wise expected density <= 50%; otherwise configs/cifar10_resnet56.py. Arms and
arguments as configs/cifar10_vgg16_depl0.py (``forward`` | ``backward`` | ``hc``,
``constrained`` | ``penalized``, ``runlocal``).

The paper's settings: generator input 16 (forward) or 64 (backward); lambda 5e-7
(forward), 1e-6 (backward), 5e-7 (L0-HC), applied as ``penalty = lambda * 850,336``
(the 55 gated convolutions' sparsifiable parameters) on the paper's cost
(``density_mode="dep_l0"``, along the call order: each convolution's inputs counted as
the previous gated convolution's outputs, as the paper's chain does; the residual sums
are not modelled); see configs/cifar10_vgg16_depl0.py.

    python train.py --config=configs/cifar10_resnet56_depl0.py --workdir=/tmp/r56_dep
    python train.py --config=configs/cifar10_resnet56_depl0.py:backward,penalized --workdir=...
    python train.py --config=configs/cifar10_resnet56_depl0.py:runlocal --workdir=/tmp/quick
"""

from configs import cifar10_vgg16, cifar10_vgg16_depl0


def get_config(arg=None):
  return cifar10_vgg16_depl0.depl0_variant(
      cifar10_vgg16.cnn_cifar("cifar_resnet", 56), arg, num_sparsifiable=850_336,
      lambdas={"forward": 5e-7, "backward": 1e-6, "hc": 5e-7},
      input_sizes={"forward": 16, "backward": 64})
