"""Flax NNX layers with hard-concrete L0 gates: the NNX twins of :mod:`l0jax.layers`.

:class:`L0Linear` gates its input units (or every weight), :class:`L0Conv` its output
channels (the bias sharing its channel's gate), :class:`L0ConvBN` the output channels of
a convolution followed by its BatchNorm (conv -> BN -> gate), with the same math as
:class:`l0jax.layers.L0Dense` / :class:`l0jax.layers.L0Conv` (both call
:func:`l0jax.layers.gated_dense` / :func:`l0jax.layers.gated_conv`). Each holds
``kernel``, ``bias`` and ``log_alpha`` as :class:`flax.nnx.Param`, so
:func:`l0jax.density.gated_layers`, :func:`l0jax.constrained.param_labels` and
``nnx.Optimizer`` see them like the Linen layers' params::

    model = MyModel(rngs=nnx.Rngs(params=0, gates=1))   # uses L0Linear / L0Conv
    y = model(x)                  # training: gate noise from the "gates" stream
    model.eval(); y = model(x)    # test-time gates (deterministic=True); model.train()
    report = l0jax.density_report(nnx.state(model, nnx.Param))

Gate noise comes, in this order, from ``noise=`` (uniforms you supply, shape
``(batch,) + log_alpha.shape`` per example or ``log_alpha.shape`` per batch), ``rngs=``
at the call, or the ``rngs`` given at construction (its ``"gates"`` stream, which
falls back to ``"default"``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence, Tuple, Union

from flax import nnx
import jax
import jax.numpy as jnp

from l0jax import gates, layers

Array = jax.Array

__all__ = ["L0Linear", "L0Conv", "L0ConvBN"]


def _key(rngs, collection: str):
  if isinstance(rngs, jax.Array):
    return rngs
  if isinstance(rngs, nnx.RngStream):
    return rngs()
  return rngs[collection]()


class _L0Module(nnx.Module):
  """Parameters and gate attributes shared by the NNX layers (the keyword arguments
  are those of :class:`l0jax.layers.L0Dense`), and the one place they sample gates."""

  def __init__(self, kernel_shape: Tuple[int, ...], gated_axis: int, *,
               use_bias: bool = True, droprate_init: float = 0.5,
               rescale_init: bool = False, unstructured: bool = False,
               sample_per_example: bool = True, deterministic: bool = False,
               test_gate: str = "median", beta: float = gates.BETA,
               gamma: float = gates.GAMMA, zeta: float = gates.ZETA,
               log_alpha_clamp: Optional[Tuple[float, float]] = None,
               kernel_init: Callable = layers.lecun_normal,
               bias_init: Callable = jax.nn.initializers.zeros,
               param_dtype: Any = jnp.float32, dtype: Any = None,
               rng_collection: str = "gates", rngs: nnx.Rngs):
    layers.check_test_gate(test_gate)
    self.droprate_init = droprate_init
    self.unstructured = unstructured
    self.sample_per_example = sample_per_example
    self.deterministic = deterministic
    self.test_gate = test_gate
    self.beta, self.gamma, self.zeta = beta, gamma, zeta
    self.log_alpha_clamp = log_alpha_clamp
    self.dtype = dtype
    self.rng_collection = rng_collection
    self.rngs = rngs
    init = layers.rescaled_init(kernel_init, droprate_init, rescale_init)
    self.kernel = nnx.Param(init(rngs.params(), kernel_shape, param_dtype))
    self.bias = (nnx.Param(bias_init(rngs.params(), kernel_shape[-1:], param_dtype))
                 if use_bias else None)
    gate_shape = kernel_shape if unstructured else (kernel_shape[gated_axis],)
    self.log_alpha = nnx.Param(gates.init_log_alpha(
        rngs.params(), gate_shape, droprate_init, param_dtype))

  def set_view(self, deterministic: Optional[bool] = None):
    """Hook of ``nnx.view`` (newer Flax), like ``nnx.Dropout``'s."""
    if deterministic is not None:
      self.deterministic = deterministic

  def _gates(self, x: Array, log_alpha: Array, deterministic: Optional[bool], rngs,
             noise, per_example: bool) -> Array:
    deterministic = self.deterministic if deterministic is None else deterministic
    kw = dict(beta=self.beta, gamma=self.gamma, zeta=self.zeta,
              clamp=self.log_alpha_clamp)
    if deterministic:
      return gates.deterministic_gate(log_alpha, self.test_gate, **kw)
    batch = x.shape[:1] if per_example else ()
    if noise is not None:
      if tuple(noise.shape) != batch + log_alpha.shape:
        raise ValueError(f"supplied gate noise has shape {tuple(noise.shape)}, the "
                         f"layer needs {batch + log_alpha.shape}")
      return gates.hard_concrete_from_uniform(noise, log_alpha, **kw)
    rngs = self.rngs if rngs is None else rngs
    if rngs is None:
      raise ValueError("training gates need rngs (at construction or in the call), "
                       "or noise=; pass deterministic=True for test-time gates")
    return gates.gate(log_alpha, _key(rngs, self.rng_collection), batch, **kw)

  def _params(self, x: Array):
    bias = None if self.bias is None else self.bias[...]
    args = (x, self.kernel[...], bias, self.log_alpha[...])
    dtype = self.dtype or jnp.result_type(*[a for a in args if a is not None])
    return tuple(None if a is None else jnp.asarray(a, dtype) for a in args)


class L0Linear(_L0Module):
  """Linear layer with hard-concrete gates on its input units (or on every weight).

  ``y = (x * z) @ kernel + bias``, ``z`` of shape ``(in,)`` per batch or ``(batch,
  in)`` per example; ``unstructured=True``: ``y = x @ (kernel * z) + bias``. The bias
  is not gated. Keyword arguments as :class:`l0jax.layers.L0Dense`'s attributes, plus
  ``rngs`` (``rngs.params()`` initialises, the ``rng_collection`` stream, default
  ``"gates"``, samples the training gates).
  """

  def __init__(self, in_features: int, out_features: int, **kwargs):
    super().__init__((in_features, out_features), 0, **kwargs)
    self.in_features, self.out_features = in_features, out_features

  def __call__(self, x: Array, *, deterministic: Optional[bool] = None,
               rngs=None, noise: Optional[Array] = None) -> Array:
    x, kernel, bias, log_alpha = self._params(x)
    per_example = self.sample_per_example and x.ndim > 1
    z = self._gates(x, log_alpha, deterministic, rngs, noise, per_example)
    return layers.gated_dense(x, kernel, bias, z, unstructured=self.unstructured)


class L0Conv(_L0Module):
  """Convolution (NHWC inputs, HWIO kernel) with gates on its output channels.

  ``y = (conv(x, kernel) + bias) * z``, folded into the kernel and bias for per-batch
  gates; ``unstructured=True`` gates every kernel weight (the bias is then ungated).
  Arguments as :class:`l0jax.layers.L0Conv`'s attributes (``strides``, ``padding``,
  ``kernel_dilation``, ``ops_method``, and the gate keywords), plus ``in_features``
  and ``rngs``; ``__call__(x, post=...)`` as there.
  """

  def __init__(self, in_features: int, out_features: int,
               kernel_size: Sequence[int], *,
               strides: Union[int, Sequence[int]] = 1,
               padding: layers.PaddingLike = "SAME",
               kernel_dilation: Union[int, Sequence[int]] = 1,
               ops_method: str = "auto", **kwargs):
    self.kernel_size = tuple(kernel_size)
    self.strides, self.padding = strides, padding
    self.kernel_dilation, self.ops_method = kernel_dilation, ops_method
    super().__init__(self.kernel_size + (in_features, out_features), -1, **kwargs)

  def __call__(self, x: Array, *, deterministic: Optional[bool] = None,
               rngs=None, noise: Optional[Array] = None,
               post: Optional[Callable[[Array], Array]] = None) -> Array:
    layers.check_conv_input(x, self.kernel_size)
    x, kernel, bias, log_alpha = self._params(x)
    z = self._gates(x, log_alpha, deterministic, rngs, noise,
                    self.sample_per_example)
    conv = lambda x, k: layers.convolution(x, k, self.strides, self.padding,
                                           self.kernel_dilation, self.ops_method)
    return layers.gated_conv(x, kernel, bias, z, conv,
                             unstructured=self.unstructured, post=post)


class L0ConvBN(L0Conv):
  """Convolution -> BatchNorm -> output-channel gates: the NNX twin of
  ``l0jax.layers.L0Conv(batch_norm=True)``, over the same functions.

  ``y = ((conv(x, kernel) - mean) * inv_std * scale + bias) * z``: a closed channel is
  exactly 0 in training and at test time, batch statistics weigh each example by its
  gate and are summed over ``axis_name`` (inside ``shard_map`` / ``pmap``), and a
  channel closed in the whole batch keeps its running statistics. Parameters
  ``kernel``, ``scale``, ``bias`` (the BN shift), ``log_alpha``; ``nnx.BatchStat``
  ``mean`` and ``var``: the Linen layer's names. ``momentum`` (0.9) and ``epsilon``
  (1e-5) as there; other arguments as :class:`L0Conv` (without ``use_bias``).
  """

  def __init__(self, in_features: int, out_features: int,
               kernel_size: Sequence[int], *, momentum: float = 0.9,
               epsilon: float = 1e-5, axis_name: Optional[str] = None, **kwargs):
    if "use_bias" in kwargs or "bias_init" in kwargs:
      raise TypeError("L0ConvBN has no conv bias: the BatchNorm shift is its bias")
    # ``bias`` (zeros, float32 like the Linen layer's) is the BatchNorm shift.
    super().__init__(in_features, out_features, kernel_size, use_bias=True,
                     bias_init=jax.nn.initializers.zeros, **kwargs)
    self.momentum, self.epsilon, self.axis_name = momentum, epsilon, axis_name
    self.scale = nnx.Param(jnp.ones((out_features,), jnp.float32))
    self.mean = nnx.BatchStat(jnp.zeros((out_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((out_features,), jnp.float32))

  def __call__(self, x: Array, *, deterministic: Optional[bool] = None,
               rngs=None, noise: Optional[Array] = None,
               post: Optional[Callable[[Array], Array]] = None) -> Array:
    layers.check_conv_input(x, self.kernel_size)
    deterministic = self.deterministic if deterministic is None else deterministic
    dtype = self.dtype or jnp.result_type(x, self.kernel[...])
    x, kernel = jnp.asarray(x, dtype), jnp.asarray(self.kernel[...], dtype)
    log_alpha = self.log_alpha[...]  # float32: the gates are never narrowed
    z = self._gates(x, log_alpha, deterministic, rngs, noise,
                    self.sample_per_example and not deterministic)
    conv = lambda x, k: layers.convolution(x, k, self.strides, self.padding,
                                           self.kernel_dilation, self.ops_method)

    def affine(y, weights):
      if deterministic:
        mean, var = self.mean[...], self.var[...]
      else:
        mean, var, count = layers.batch_norm_statistics(y, weights, self.axis_name)
        self.mean[...], self.var[...] = layers.running_statistics(
            self.mean[...], self.var[...], mean, var, count, self.momentum)
      return layers.batch_norm_affine(self.scale[...], self.bias[...], mean, var,
                                      self.epsilon)
    return layers.gated_conv_bn(x, kernel, z, conv, affine,
                                unstructured=self.unstructured, post=post)
