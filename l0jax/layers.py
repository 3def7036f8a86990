"""Flax Linen layers with hard-concrete L0 gates: thin shells over :mod:`l0jax.gates`.

* :class:`L0Dense` gates its *input neurons*: one gate per row of the ``(in, out)``
  kernel, so a closed gate removes an input neuron (and, in the previous layer, the
  unit that feeds it). ``unstructured=True`` gates every weight instead.
* :class:`L0Conv` gates its *output channels*: one gate per channel, the bias sharing
  its channel's gate, so a closed channel outputs exact zeros in training and at test
  time. ``unstructured=True`` gates every kernel weight (the bias is then ungated).
  ``batch_norm=True`` puts a BatchNorm between the convolution and the gate
  (:func:`batch_norm`): conv -> BN -> gate, so a closed channel is exactly zero (BN
  cannot re-add its shift) and the gate's gradient is not normalised away.
* :class:`ConvBN` is the same convolution + BatchNorm without gates (the dense
  baselines and purged models), with the same parameter names.

Each layer owns a parameter ``log_alpha`` next to ``kernel`` and ``bias``. In training
(``deterministic=False``) gate noise is drawn from the rng stream ``"gates"``, once
per example (``sample_per_example=True``, the papers' choice) or once per batch, unless
the caller supplies the uniform noise itself in the variable collection
``"gate_noise"`` (:data:`NOISE_COLLECTION`; :func:`per_example_noise` builds it from
one key per example, which is how the trainer makes every example's noise independent
of the device it lands on, without running the model under ``vmap``); at test time
(``deterministic=True``) the gate is :func:`l0jax.gates.deterministic_gate` with
``test_gate`` mode ``"median"`` or ``"eq13"`` and no rng is needed.

:mod:`l0jax.density` reads these parameters back: it recognises a gated layer as a
parameter dict holding ``kernel`` and ``log_alpha``.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import flax
import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp

from l0jax import gates, ops

Array = jax.Array
Initializer = Callable[..., Array]
PaddingLike = Union[str, Sequence[Tuple[int, int]]]

__all__ = ["L0Dense", "L0Conv", "ConvBN", "NOISE_COLLECTION", "batch_norm",
           "lecun_normal", "per_example_noise"]

NOISE_COLLECTION = "gate_noise"


def lecun_normal(key, shape, dtype=jnp.float32) -> Array:
  """Flax's default ``lecun_normal`` (truncated normal, variance ``1 / fan_in``).

  Same numbers as ``nn.initializers.lecun_normal()``, drawn flat and reshaped:
  XLA:CPU compiles an N-D random draw several times slower than a 1-D one, and that
  compile dominated model initialisation. ``fan_in = prod(shape[:-1])``. An empty
  kernel (a purged layer left with no channels) is all zeros.
  """
  shape = tuple(shape)
  if math.prod(shape) == 0:
    return jnp.zeros(shape, dtype)
  fan_in = math.prod(shape[:-1])
  # 0.879... is the std of a standard normal truncated to [-2, 2].
  stddev = math.sqrt(1.0 / fan_in) / 0.87962566103423978
  flat = jax.random.truncated_normal(key, -2.0, 2.0, (math.prod(shape),), dtype)
  return (flat * stddev).astype(dtype).reshape(shape)


def per_example_noise(keys: Array, params) -> Dict[str, Any]:
  """``U(0, 1)`` gate noise for every gated layer of ``params``, one key per example.

  Example ``b`` draws all of its noise, for every layer, in one flat
  ``jax.random.uniform(keys[b], (total_gates,))`` (computed by
  :func:`l0jax.gates.uniform`), split in the order of the flattened ``params`` paths.
  The result is the ``"gate_noise"`` collection to pass with the parameters::

      noise = per_example_noise(keys, params)          # keys: shape (batch,)
      model.apply({"params": params, NOISE_COLLECTION: noise}, x)

  Args:
    keys: PRNG key array of shape ``(batch,)``.
    params: the model's parameters; a gated layer is a dict with ``kernel`` and
      ``log_alpha``.

  Returns:
    A nested dict mirroring ``params`` with ``{"uniform": u}`` at every gated layer,
    ``u`` of shape ``(batch,) + log_alpha.shape`` in ``log_alpha``'s compute dtype.
  """
  if keys.ndim != 1:
    raise ValueError(f"keys must have shape (batch,), got {keys.shape}")
  flat = traverse_util.flatten_dict(flax.core.unfreeze(params))
  layers = [path[:-1] for path in flat
            if path[-1] == "log_alpha" and path[:-1] + ("kernel",) in flat]
  if not layers:
    raise ValueError("params contain no gated layer (no dict with both 'kernel' and "
                     "'log_alpha')")
  shapes = [flat[path + ("log_alpha",)].shape for path in layers]
  dtype = jnp.promote_types(flat[layers[0] + ("log_alpha",)].dtype, jnp.float32)
  sizes = [math.prod(shape) for shape in shapes]
  u = gates.uniform(keys, sum(sizes), dtype)
  pieces = jnp.split(u, list(itertools.accumulate(sizes))[:-1], axis=1)
  return traverse_util.unflatten_dict({
      path + ("uniform",): piece.reshape((keys.shape[0],) + shape)
      for path, shape, piece in zip(layers, shapes, pieces)})


class _GateMixin:
  """Gate attributes and the one place where layers turn log_alpha into gates."""

  def _gate_kwargs(self):
    return dict(beta=self.beta, gamma=self.gamma, zeta=self.zeta,
                clamp=self.log_alpha_clamp)

  def _log_alpha(self, shape) -> Array:
    if self.test_gate not in gates.TEST_GATE_MODES:
      raise ValueError(f"test_gate must be one of {gates.TEST_GATE_MODES}, "
                       f"got {self.test_gate!r}")
    return self.param(
        "log_alpha",
        lambda key, s: gates.init_log_alpha(key, s, self.droprate_init,
                                            self.param_dtype),
        shape)

  def _kernel_init(self) -> Initializer:
    if not self.rescale_init:
      return self.kernel_init
    scale = 1.0 / (1.0 - self.droprate_init)
    return lambda key, shape, dtype=jnp.float32: scale * self.kernel_init(
        key, shape, dtype)

  def _gates(self, log_alpha: Array, deterministic: bool, batch_shape) -> Array:
    """Test-time gates, or samples of shape ``batch_shape + log_alpha.shape``."""
    if deterministic:
      return gates.deterministic_gate(log_alpha, self.test_gate,
                                      **self._gate_kwargs())
    shape = tuple(batch_shape) + log_alpha.shape
    if self.has_variable(NOISE_COLLECTION, "uniform"):
      u = self.get_variable(NOISE_COLLECTION, "uniform")
      if u.shape != shape:
        raise ValueError(f"{self.name}: supplied gate noise has shape {u.shape}, the "
                         f"layer needs {shape}")
      return gates.hard_concrete_from_uniform(u, log_alpha, **self._gate_kwargs())
    return gates.hard_concrete_sample(self.make_rng("gates"), log_alpha, shape,
                                      **self._gate_kwargs())


class L0Dense(_GateMixin, nn.Module):
  """Dense layer with hard-concrete gates on its input neurons (or on every weight).

  ``y = (x * z) @ kernel + bias`` with ``z`` of shape ``(in,)`` per batch or
  ``(batch, in)`` per example; with ``unstructured=True``,
  ``y = x @ (kernel * z) + bias`` with ``z`` of the kernel's shape (per example that
  means one gated kernel per example: ``batch * in * out`` memory). The bias is not
  gated.

  Attributes:
    features: number of output features.
    use_bias: whether to add a bias.
    droprate_init: initial drop probability of every gate, in (0, 1).
    rescale_init: multiply the initial kernel by ``1 / (1 - droprate_init)``.
    unstructured: one gate per weight instead of one per input neuron.
    sample_per_example: draw gate noise per example (first axis of ``x``) instead of
      once per batch. Ignored for 1-D inputs.
    deterministic: use the test-time gate (no rng needed); may be passed to
      ``__call__`` instead.
    test_gate: test-time gate mode, ``"median"`` or ``"eq13"``.
    beta, gamma, zeta: hard-concrete temperature and stretch.
    log_alpha_clamp: optional ``(lo, hi)`` clamp of ``log_alpha`` (none by default).
  """
  features: int
  use_bias: bool = True
  droprate_init: float = 0.5
  rescale_init: bool = False
  unstructured: bool = False
  sample_per_example: bool = True
  deterministic: Optional[bool] = None
  test_gate: str = "median"
  beta: float = gates.BETA
  gamma: float = gates.GAMMA
  zeta: float = gates.ZETA
  log_alpha_clamp: Optional[Tuple[float, float]] = None
  kernel_init: Initializer = lecun_normal
  bias_init: Initializer = nn.initializers.zeros_init()
  param_dtype: Any = jnp.float32
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, deterministic: Optional[bool] = None) -> Array:
    deterministic = nn.merge_param("deterministic", self.deterministic,
                                   deterministic)
    in_features = x.shape[-1]
    kernel = self.param("kernel", self._kernel_init(),
                        (in_features, self.features), self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    gate_shape = kernel.shape if self.unstructured else (in_features,)
    log_alpha = self._log_alpha(gate_shape)  # float32: the gates are never narrowed
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    sample = lambda batch: self._gates(log_alpha, deterministic, batch).astype(x.dtype)

    per_example = self.sample_per_example and x.ndim > 1 and not deterministic
    if self.unstructured:
      if per_example:
        z = sample(x.shape[:1])
        lead = x.reshape(x.shape[0], -1, in_features)
        y = jnp.einsum("bti,bio->bto", lead, kernel * z)
        y = y.reshape(x.shape[:-1] + (self.features,))
      else:
        y = x @ (kernel * sample(()))
    else:
      if per_example:
        z = sample(x.shape[:1])
        z = z.reshape((x.shape[0],) + (1,) * (x.ndim - 2) + (in_features,))
        y = (x * z) @ kernel
      else:
        z = sample(())
        y = x @ (kernel * z[:, None])
    if bias is not None:
      y = y + bias
    return y


def batch_norm(module: nn.Module, y: Array, *, deterministic: bool,
               open_weights: Optional[Array] = None, momentum: float = 0.9,
               epsilon: float = 1e-5, axis_name: Optional[str] = None
               ) -> Tuple[Array, Array, Array, Array]:
  """The BatchNorm of ``module``'s channels-last output ``y``: ``(mean, inv_std, scale,
  shift)``, each ``(C,)`` in float32, so that the normalised output is
  ``(y - mean) * inv_std * scale + shift``.

  Parameters ``scale`` / ``bias`` and statistics ``mean`` / ``var`` (collection
  ``"batch_stats"``) live in ``module``. In training (``deterministic=False``) the
  statistics are those of the batch, over the values of *open* channels only:
  ``open_weights`` (``(batch, C)`` or ``(C,)``; None: all open) weighs every
  example's values of each channel; the gated layers pass the sampled gates
  themselves (gradient stopped), so a closed gate (exactly 0) excludes its example
  and a barely open one counts little: the statistics stay a continuous function of
  the gate parameters (a 0/1 mask would jump whenever a gate crosses zero, and 1 and 4
  devices, whose parameters differ by float rounding, could then disagree). Sums are
  ``psum``-ed over ``axis_name`` (the data-parallel axis), so every device computes
  the global statistics and 1 or 4 devices give the same result. The running
  statistics move by ``1 - momentum`` towards them, only for channels open somewhere
  in the global batch (a closed channel keeps its statistics), and not while the
  module is being initialised. At test time the running statistics are used.
  """
  channels = y.shape[-1]
  scale = module.param("scale", nn.initializers.ones_init(), (channels,), jnp.float32)
  shift = module.param("bias", nn.initializers.zeros_init(), (channels,), jnp.float32)
  ra_mean = module.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
  ra_var = module.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
  if deterministic:
    mean, var = ra_mean.value, ra_var.value
  else:
    y32 = y.astype(jnp.float32)
    positions = math.prod(y.shape[1:-1])
    w = (jnp.ones((channels,), jnp.float32) if open_weights is None
         else open_weights.astype(jnp.float32))
    if w.ndim == 1:  # the same for every example
      axes = tuple(range(y.ndim - 1))
      count = w * (y.shape[0] * positions)
      s1 = jnp.sum(y32, axis=axes) * w
      s2 = jnp.sum(y32 * y32, axis=axes) * w
    else:  # (batch, C), per example: weigh per-example sums (no weighted copy of y)
      axes = tuple(range(1, y.ndim - 1))
      count = jnp.sum(w, axis=0) * positions
      s1 = jnp.sum(jnp.sum(y32, axis=axes) * w, axis=0)
      s2 = jnp.sum(jnp.sum(y32 * y32, axis=axes) * w, axis=0)
    if axis_name is not None:
      count, s1, s2 = jax.lax.psum((count, s1, s2), axis_name)
    mean = s1 / jnp.maximum(count, 1.0)
    var = jnp.maximum(s2 / jnp.maximum(count, 1.0) - mean * mean, 0.0)
    if not module.is_initializing():
      seen = count > 0
      ra_mean.value = jnp.where(seen, momentum * ra_mean.value + (1 - momentum) * mean,
                                ra_mean.value)
      ra_var.value = jnp.where(seen, momentum * ra_var.value + (1 - momentum) * var,
                               ra_var.value)
  return mean, jax.lax.rsqrt(var + epsilon), scale, shift


class _ConvMixin:
  """The convolution of a conv layer with its attributes (kernel_size, strides, ...)."""

  def _conv(self, x: Array, kernel: Array) -> Array:
    spatial = len(self.kernel_size)
    as_tuple = lambda v: (v,) * spatial if isinstance(v, int) else tuple(v)
    letters = "DHW"[-spatial:]
    dims = jax.lax.conv_dimension_numbers(
        x.shape, kernel.shape,
        ("N" + letters + "C", letters + "IO", "N" + letters + "C"))
    padding = self.padding if isinstance(self.padding, str) else tuple(
        tuple(p) for p in self.padding)
    return ops.conv_general_dilated(
        x, kernel, as_tuple(self.strides), padding,
        rhs_dilation=as_tuple(self.kernel_dilation), dimension_numbers=dims,
        method=self.ops_method)

  def _check_rank(self, x: Array) -> None:
    spatial = len(self.kernel_size)
    if not 1 <= spatial <= 3:
      raise ValueError(f"kernel_size must have 1 to 3 dims, got {self.kernel_size}")
    if x.ndim != spatial + 2:
      raise ValueError(f"{type(self).__name__} with kernel_size "
                       f"{tuple(self.kernel_size)} expects inputs of rank {spatial + 2} "
                       f"(N, spatial..., C), got shape {x.shape}")


def _checked(post: Optional[Callable[[Array], Array]], features: int):
  """``post`` with a check that it keeps the batch axis first and the channels last."""
  def apply(y):
    if post is None:
      return y
    out = post(y)
    if out.shape[:1] != y.shape[:1] or out.shape[-1] != features:
      raise ValueError(f"post must keep the batch axis first and the {features} "
                       f"channels last, got shape {out.shape} from {y.shape}")
    return out
  return apply


class ConvBN(_ConvMixin, nn.Module):
  """Convolution (no bias) + BatchNorm, ungated: ``post((y - mean) * inv_std * scale +
  bias)`` with ``y = conv(x, kernel)`` (:func:`batch_norm`, all channels open).

  The parameters (``kernel``, ``scale``, ``bias``; ``batch_stats``: ``mean``,
  ``var``) are named as in ``L0Conv(batch_norm=True)``, so a dense baseline, a gated
  model and its purged copy share one layout. Attributes as :class:`L0Conv`'s.
  """
  features: int
  kernel_size: Sequence[int]
  strides: Union[int, Sequence[int]] = 1
  padding: PaddingLike = "SAME"
  kernel_dilation: Union[int, Sequence[int]] = 1
  ops_method: str = "auto"
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  axis_name: Optional[str] = None
  kernel_init: Initializer = lecun_normal
  param_dtype: Any = jnp.float32
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, deterministic: bool = False,
               post: Optional[Callable[[Array], Array]] = None) -> Array:
    self._check_rank(x)
    kernel = self.param("kernel", self.kernel_init,
                        tuple(self.kernel_size) + (x.shape[-1], self.features),
                        self.param_dtype)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    y = self._conv(x, kernel)
    mean, inv_std, scale, shift = batch_norm(
        self, y, deterministic=deterministic, momentum=self.bn_momentum,
        epsilon=self.bn_epsilon, axis_name=self.axis_name)
    a = scale * inv_std
    return _checked(post, self.features)(
        (y * a.astype(y.dtype) + (shift - mean * a).astype(y.dtype)))


class L0Conv(_ConvMixin, _GateMixin, nn.Module):
  """Convolution (NHWC inputs, HWIO kernel) with gates on its output channels.

  ``y = (conv(x, kernel) + bias) * z`` with ``z`` of shape ``(out,)`` per batch or
  ``(batch, out)`` per example, so a closed channel's bias contributes nothing.
  Per-batch gates are folded into the kernel and bias, ``conv(x, kernel * z) + bias
  * z``, the same function with no pass over the output. With
  ``unstructured=True``, ``y = conv(x, kernel * z) + bias`` with ``z`` of the kernel's
  shape and an ungated bias (per-example gates then convolve each example with its
  own kernel).

  With ``batch_norm=True`` the convolution has no bias of its own and a BatchNorm
  follows it, before the gate: ``y = ((conv(x, kernel) - mean) * inv_std * scale +
  bias) * z`` (:func:`batch_norm`; ``bias``, the BN shift, shares the channel's gate
  as a conv bias does). The gate comes *after* BN for two reasons: a closed channel is
  then exactly zero in training and at test time (BN after the gate would add its
  shift back), and the gate's gradient keeps its size (BN after a gate divides the
  gate's scale out again: with per-batch gates the loss would not depend on an open
  gate's value at all). Batch statistics weigh each example by its gate (closed
  examples do not count), and channels closed in the whole batch do not move their
  running statistics.

  Attributes are those of :class:`L0Dense` plus ``kernel_size``, ``strides``,
  ``padding`` (``"SAME"``, ``"VALID"`` or explicit pairs), ``kernel_dilation``,
  ``ops_method`` (:data:`l0jax.ops.METHODS`: ``"auto"`` runs im2col + matmul on
  CPU and XLA's convolution elsewhere, ``"matmul"`` / ``"xla"`` force one; see
  :mod:`l0jax.ops`), ``batch_norm``, ``bn_momentum``, ``bn_epsilon`` and
  ``axis_name`` (the data-parallel axis BN statistics are summed over).
  """
  features: int
  kernel_size: Sequence[int]
  strides: Union[int, Sequence[int]] = 1
  padding: PaddingLike = "SAME"
  kernel_dilation: Union[int, Sequence[int]] = 1
  ops_method: str = "auto"
  use_bias: bool = True
  batch_norm: bool = False
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  axis_name: Optional[str] = None
  droprate_init: float = 0.5
  rescale_init: bool = False
  unstructured: bool = False
  sample_per_example: bool = True
  deterministic: Optional[bool] = None
  test_gate: str = "median"
  beta: float = gates.BETA
  gamma: float = gates.GAMMA
  zeta: float = gates.ZETA
  log_alpha_clamp: Optional[Tuple[float, float]] = None
  kernel_init: Initializer = lecun_normal
  bias_init: Initializer = nn.initializers.zeros_init()
  param_dtype: Any = jnp.float32
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, deterministic: Optional[bool] = None,
               post: Optional[Callable[[Array], Array]] = None) -> Array:
    """The gated convolution; with ``post``, ``post`` applied to it.

    Args:
      x: ``(N, spatial..., C)`` inputs.
      deterministic: test-time gates (and BN running statistics) instead of sampled
        gates (and batch statistics).
      post: what follows the layer, e.g. ReLU and max pooling. It must be
        positively homogeneous per output channel, ``post(y * z) == post(y) * z``
        for every ``z >= 0`` over the channel (last) axis, and keep the batch axis
        first and the channels last: ReLU, max and average pooling are. The
        structured gates then multiply ``post``'s (pooled, smaller) output instead
        of the convolution's; the result is the same up to float rounding.
    """
    deterministic = nn.merge_param("deterministic", self.deterministic,
                                   deterministic)
    self._check_rank(x)
    kernel_shape = tuple(self.kernel_size) + (x.shape[-1], self.features)
    kernel = self.param("kernel", self._kernel_init(), kernel_shape,
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias and not self.batch_norm else None)
    gate_shape = kernel.shape if self.unstructured else (self.features,)
    log_alpha = self._log_alpha(gate_shape)  # float32: the gates are never narrowed
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    post = _checked(post, self.features)
    per_example = self.sample_per_example and not deterministic
    z = self._gates(log_alpha, deterministic, x.shape[:1] if per_example else ())
    if self.unstructured:
      kernel = kernel * z.astype(kernel.dtype)
      if per_example:
        y = jax.vmap(lambda xi, ki: self._conv(xi[None], ki)[0])(x, kernel)
      else:
        y = self._conv(x, kernel)
      if self.batch_norm:
        return post(self._normalize(y, None, deterministic))
      return post(y + bias if bias is not None else y)
    if self.batch_norm:
      y = self._conv(x, kernel)
      weights = jax.lax.stop_gradient(z)  # closed: excluded (batch_norm's docstring)
      if per_example:
        y = self._normalize(y, weights, deterministic)
        return post(y) * self._per_example(z, y)
      return post(self._normalize(y, weights, deterministic, z))
    if not per_example:  # fold the shared gates into the kernel and bias
      zc = z.astype(kernel.dtype)
      y = self._conv(x, kernel * zc)
      return post(y + bias * zc if bias is not None else y)
    y = post(self._conv(x, kernel) + bias if bias is not None else self._conv(x, kernel))
    return y * self._per_example(z, y)

  def _per_example(self, z: Array, y: Array) -> Array:
    """Per-example channel gates ``(batch, C)`` shaped to multiply ``y``."""
    return z.astype(y.dtype).reshape((y.shape[0],) + (1,) * (y.ndim - 2) + (y.shape[-1],))

  def _normalize(self, y: Array, weights, deterministic: bool, z=None) -> Array:
    """BatchNorm of ``y`` (statistics weighted by the gates); per-batch gates ``z`` are
    folded into the affine map, so a closed channel is an exact zero."""
    mean, inv_std, scale, shift = batch_norm(
        self, y, deterministic=deterministic, open_weights=weights,
        momentum=self.bn_momentum, epsilon=self.bn_epsilon, axis_name=self.axis_name)
    a = scale * inv_std
    b = shift - mean * a
    if z is not None:
      a, b = a * z, b * z
    return y * a.astype(y.dtype) + b.astype(y.dtype)
