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
import warnings
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import flax
import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp

from l0jax import density, gates, ops

Array = jax.Array
Initializer = Callable[..., Array]
PaddingLike = Union[str, Sequence[Tuple[int, int]]]

__all__ = ["L0Dense", "L0Conv", "ConvBN", "NOISE_COLLECTION", "batch_norm",
           "batch_norm_statistics", "convolution", "gated_conv", "gated_conv_bn",
           "gated_dense", "lecun_normal", "per_example_noise"]

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
  :func:`l0jax.gates.uniform`), split by layer in the order of
  :func:`l0jax.density.gated_layers` (natural sort of the layer paths, whatever the
  dict order).
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
  found = density._layer_dicts(flax.core.unfreeze(params))  # pylint: disable=protected-access
  layers = list(found)
  if not layers:
    raise ValueError("params contain no gated layer (no dict with both 'kernel' and "
                     "'log_alpha')")
  shapes = [found[path]["log_alpha"].shape for path in layers]
  dtype = jnp.promote_types(found[layers[0]]["log_alpha"].dtype, jnp.float32)
  sizes = [math.prod(shape) for shape in shapes]
  u = gates.uniform(keys, sum(sizes), dtype)
  pieces = jnp.split(u, list(itertools.accumulate(sizes))[:-1], axis=1)
  return traverse_util.unflatten_dict({
      path + ("uniform",): piece.reshape((keys.shape[0],) + shape)
      for path, shape, piece in zip(layers, shapes, pieces)})


_PER_EXAMPLE_UNSTRUCTURED = (
    "per-example unstructured gates draw one gate per weight per example ({count:,} "
    "hard-concrete samples for this {what}); that is batch times the per-batch cost: "
    "{measured} (`python benchmarks/step_time.py --compare`, gate modes table). Use "
    "sample_per_example=False (one sample per batch) or structured gates.")
# Measured with that command on the project's 2-core CPU (jax 0.10.2).
_PER_EXAMPLE_UNSTRUCTURED_COST = (
    "a 64x512->256 dense layer's forward + backward took 242 ms with per-example "
    "unstructured gates against 0.94 ms with per-batch ones, most of it drawing and "
    "transforming the 8.4M noise samples")


def _warn_per_example_unstructured(count: int, what: str) -> None:
  warnings.warn(_PER_EXAMPLE_UNSTRUCTURED.format(
      count=count, what=what, measured=_PER_EXAMPLE_UNSTRUCTURED_COST), stacklevel=3)


def gated_dense(x: Array, kernel: Array, bias: Optional[Array], z: Array, *,
                unstructured: bool = False) -> Array:
  """The gated dense map for given gates ``z`` (the math of :class:`L0Dense`).

  Structured (input-unit) gates: ``z`` of shape ``(in,)`` (one sample for the batch,
  folded into the kernel rows) or ``(batch, in)`` (per example, on the inputs);
  ``y = (x * z) @ kernel + bias``. Unstructured: ``z`` of the kernel's shape, or
  ``(batch,) + kernel.shape`` per example (one gated kernel per example: warns, see
  :data:`_PER_EXAMPLE_UNSTRUCTURED`); ``y = x @ (kernel * z) + bias``. The bias is
  not gated.
  """
  in_features = kernel.shape[0]
  if unstructured:
    if z.ndim == kernel.ndim + 1:
      _warn_per_example_unstructured(z.size, "dense layer")
      lead = x.reshape(x.shape[0], -1, in_features)
      y = jnp.einsum("bti,bio->bto", lead, kernel * z)
      y = y.reshape(x.shape[:-1] + (kernel.shape[-1],))
    else:
      y = x @ (kernel * z)
  elif z.ndim == 2:
    y = (x * z.reshape((x.shape[0],) + (1,) * (x.ndim - 2) + (in_features,))) @ kernel
  else:
    y = x @ (kernel * z[:, None])
  return y if bias is None else y + bias


def check_conv_input(x: Array, kernel_size: Sequence[int]) -> None:
  """Raises ValueError unless ``x`` is ``(N, spatial..., C)`` for ``kernel_size``."""
  spatial = len(kernel_size)
  if not 1 <= spatial <= 3:
    raise ValueError(f"kernel_size must have 1 to 3 dims, got {kernel_size}")
  if x.ndim != spatial + 2:
    raise ValueError(f"an L0 conv with kernel_size {tuple(kernel_size)} expects "
                     f"inputs of rank {spatial + 2} (N, spatial..., C), got shape "
                     f"{x.shape}")


def convolution(x: Array, kernel: Array, strides=1, padding: PaddingLike = "SAME",
                kernel_dilation=1, ops_method: str = "auto") -> Array:
  """NHWC x HWIO convolution through :func:`l0jax.ops.conv_general_dilated`."""
  spatial = kernel.ndim - 2
  as_tuple = lambda v: (v,) * spatial if isinstance(v, int) else tuple(v)
  letters = "DHW"[-spatial:]
  dims = jax.lax.conv_dimension_numbers(
      x.shape, kernel.shape, ("N" + letters + "C", letters + "IO", "N" + letters + "C"))
  padding = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
  return ops.conv_general_dilated(
      x, kernel, as_tuple(strides), padding, rhs_dilation=as_tuple(kernel_dilation),
      dimension_numbers=dims, method=ops_method)


def gated_conv(x: Array, kernel: Array, bias: Optional[Array], z: Array,
               conv: Callable[[Array, Array], Array], *, unstructured: bool = False,
               post: Optional[Callable[[Array], Array]] = None) -> Array:
  """The gated convolution for given gates ``z`` (the math of :class:`L0Conv`).

  ``conv(x, kernel)`` is the convolution (e.g. :func:`convolution` with the layer's
  strides and padding). Channel gates: ``z`` of shape ``(out,)`` (folded into the
  kernel and bias) or ``(batch, out)`` (multiplying ``post``'s output; see
  :meth:`L0Conv.__call__` for ``post``). Unstructured: ``z`` of the kernel's shape, or
  ``(batch,) + kernel.shape`` (each example convolved with its own kernel: warns),
  with an ungated bias.
  """
  features = kernel.shape[-1]
  post_checked = _post_checked(post, features)
  if unstructured:
    y = _unstructured_conv(x, kernel, z, conv)
    return post_checked(y + bias if bias is not None else y)
  if z.ndim == 1:  # fold the shared gates into the kernel and bias
    y = conv(x, kernel * z)
    return post_checked(y + bias * z if bias is not None else y)
  y = conv(x, kernel)
  y = post_checked(y + bias if bias is not None else y)
  return y * z.reshape((x.shape[0],) + (1,) * (y.ndim - 2) + (features,))


def _post_checked(post: Optional[Callable[[Array], Array]], features: int):
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


def _unstructured_conv(x: Array, kernel: Array, z: Array, conv) -> Array:
  """``conv(x, kernel * z)``; per example (``z`` with a batch axis) one kernel each."""
  z = z.astype(kernel.dtype)
  if z.ndim == kernel.ndim + 1:
    _warn_per_example_unstructured(z.size, "convolution")
    return jax.vmap(lambda xi, ki: conv(xi[None], ki)[0])(x, kernel * z)
  return conv(x, kernel * z)


def batch_norm_statistics(y: Array, weights: Optional[Array] = None,
                          axis_name: Optional[str] = None
                          ) -> Tuple[Array, Array, Array]:
  """Per-channel ``(mean, var, count)`` of channels-last ``y``, in float32.

  ``weights`` (``(batch, C)``, or ``(C,)`` for every example alike; None: all 1)
  weighs each example's values of each channel: the gated layers pass their gates,
  so a closed gate (exactly 0) excludes the example and a barely open one counts
  little. Sums are ``psum``-ed over ``axis_name`` (the data-parallel axis), so every
  device gets the global statistics.
  """
  channels = y.shape[-1]
  y32 = y.astype(jnp.float32)
  positions = math.prod(y.shape[1:-1])
  w = (jnp.ones((channels,), jnp.float32) if weights is None
       else weights.astype(jnp.float32))
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
  return mean, var, count


def gated_conv_bn(x: Array, kernel: Array, z: Array, conv: Callable[[Array, Array], Array],
                  affine: Callable[[Array, Optional[Array]], Tuple[Array, Array]], *,
                  unstructured: bool = False,
                  post: Optional[Callable[[Array], Array]] = None) -> Array:
  """conv -> BatchNorm -> gate for given gates ``z`` (the math of
  ``L0Conv(batch_norm=True)``).

  ``affine(y, weights)`` returns the per-channel ``(a, b)`` BatchNorm applies,
  ``y * a + b``, with batch statistics weighted by ``weights`` (the gates, gradient
  stopped; see :func:`batch_norm_statistics`). Channel gates ``(out,)`` are folded
  into ``(a, b)``; per-example gates ``(batch, out)`` multiply ``post``'s output.
  Unstructured gates scale the kernel (BN then sees every example).
  """
  post_checked = _post_checked(post, kernel.shape[-1])
  if unstructured:
    y = _unstructured_conv(x, kernel, z, conv)
    a, b = affine(y, None)
    return post_checked(y * a.astype(y.dtype) + b.astype(y.dtype))
  y = conv(x, kernel)
  a, b = affine(y, jax.lax.stop_gradient(z))
  if z.ndim == 1:  # the shared gates fold into the affine map: closed is exactly 0
    return post_checked(y * (a * z).astype(y.dtype) + (b * z).astype(y.dtype))
  out = post_checked(y * a.astype(y.dtype) + b.astype(y.dtype))
  return out * z.astype(out.dtype).reshape(
      (x.shape[0],) + (1,) * (out.ndim - 2) + (out.shape[-1],))


def batch_norm(module: nn.Module, y: Array, *, deterministic: bool,
               weights: Optional[Array] = None, momentum: float = 0.9,
               epsilon: float = 1e-5, axis_name: Optional[str] = None
               ) -> Tuple[Array, Array]:
  """The BatchNorm of ``module``'s channels-last output ``y``, as the per-channel
  ``(a, b)`` of ``y * a + b`` (float32).

  Parameters ``scale`` / ``bias`` and statistics ``mean`` / ``var`` (collection
  ``"batch_stats"``) live in ``module``. In training (``deterministic=False``) the
  statistics are the batch's, weighted by ``weights`` and summed over ``axis_name``
  (:func:`batch_norm_statistics`); the gated layers pass the sampled gates, which
  keeps the statistics a continuous function of the gate parameters (a 0/1 mask would
  jump whenever a gate crosses zero, and 1 and 4 devices, whose parameters differ by
  float rounding, could then disagree). The running statistics move by ``1 -
  momentum`` towards them, only for channels open somewhere in the global batch (a
  closed channel keeps its statistics), and not while the module is initialised. At
  test time the running statistics are used.
  """
  channels = y.shape[-1]
  scale = module.param("scale", nn.initializers.ones_init(), (channels,), jnp.float32)
  shift = module.param("bias", nn.initializers.zeros_init(), (channels,), jnp.float32)
  ra_mean = module.variable("batch_stats", "mean", jnp.zeros, (channels,), jnp.float32)
  ra_var = module.variable("batch_stats", "var", jnp.ones, (channels,), jnp.float32)
  if deterministic:
    mean, var = ra_mean.value, ra_var.value
  else:
    mean, var, count = batch_norm_statistics(y, weights, axis_name)
    if not module.is_initializing():
      ra_mean.value, ra_var.value = running_statistics(
          ra_mean.value, ra_var.value, mean, var, count, momentum)
  return batch_norm_affine(scale, shift, mean, var, epsilon)


def running_statistics(running_mean: Array, running_var: Array, mean: Array, var: Array,
                       count: Array, momentum: float) -> Tuple[Array, Array]:
  """Running statistics moved by ``1 - momentum`` towards the batch's, only for the
  channels the batch saw (``count > 0``: a channel closed everywhere keeps its own)."""
  seen = count > 0
  return (jnp.where(seen, momentum * running_mean + (1 - momentum) * mean, running_mean),
          jnp.where(seen, momentum * running_var + (1 - momentum) * var, running_var))


def batch_norm_affine(scale: Array, shift: Array, mean: Array, var: Array,
                      epsilon: float) -> Tuple[Array, Array]:
  """BatchNorm as the per-channel ``(a, b)`` of ``y * a + b``."""
  a = scale * jax.lax.rsqrt(var + epsilon)
  return a, shift - mean * a


class ConvBN(nn.Module):
  """Convolution (no bias) + BatchNorm, ungated: ``post(y * a + b)`` with ``y =
  conv(x, kernel)`` and the BatchNorm's ``(a, b)`` (:func:`batch_norm`, all open).

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
    check_conv_input(x, self.kernel_size)
    kernel = self.param("kernel", self.kernel_init,
                        tuple(self.kernel_size) + (x.shape[-1], self.features),
                        self.param_dtype)
    x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
    y = convolution(x, kernel, self.strides, self.padding, self.kernel_dilation,
                    self.ops_method)
    a, b = batch_norm(self, y, deterministic=deterministic, momentum=self.bn_momentum,
                      epsilon=self.bn_epsilon, axis_name=self.axis_name)
    return _post_checked(post, self.features)(
        y * a.astype(y.dtype) + b.astype(y.dtype))


def check_test_gate(mode: str) -> None:
  if mode not in gates.TEST_GATE_MODES:
    raise ValueError(f"test_gate must be one of {gates.TEST_GATE_MODES}, got {mode!r}")


def rescaled_init(kernel_init: Initializer, droprate_init: float,
                  rescale: bool) -> Initializer:
  """``kernel_init``, times ``1 / (1 - droprate_init)`` when ``rescale``."""
  if not rescale:
    return kernel_init
  scale = 1.0 / (1.0 - droprate_init)
  return lambda key, shape, dtype=jnp.float32: scale * kernel_init(key, shape, dtype)


class _GateMixin:
  """Gate attributes and the one place where layers turn log_alpha into gates."""

  def _gate_kwargs(self):
    return dict(beta=self.beta, gamma=self.gamma, zeta=self.zeta,
                clamp=self.log_alpha_clamp)

  def _log_alpha(self, shape) -> Array:
    check_test_gate(self.test_gate)
    return self.param(
        "log_alpha",
        lambda key, s: gates.init_log_alpha(key, s, self.droprate_init,
                                            self.param_dtype),
        shape)

  def _kernel_init(self) -> Initializer:
    return rescaled_init(self.kernel_init, self.droprate_init, self.rescale_init)

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

    per_example = self.sample_per_example and x.ndim > 1 and not deterministic
    z = self._gates(log_alpha, deterministic, x.shape[:1] if per_example else ())
    return gated_dense(x, kernel, bias, z.astype(x.dtype), unstructured=self.unstructured)


class L0Conv(_GateMixin, nn.Module):
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
  bias) * z`` (:func:`gated_conv_bn`, :func:`batch_norm`; ``bias``, the BN shift,
  shares the channel's gate as a conv bias does). The gate comes *after* BN for two
  reasons: a closed channel is then exactly zero in training and at test time (BN
  after the gate would add its shift back), and the gate's gradient keeps its size
  (BN after a gate divides the gate's scale out again: with per-batch gates the loss
  would not depend on an open gate's value at all). Batch statistics weigh each
  example by its gate (closed examples do not count), and channels closed in the whole
  batch do not move their running statistics.

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

  def _conv(self, x: Array, kernel: Array) -> Array:
    return convolution(x, kernel, self.strides, self.padding, self.kernel_dilation,
                       self.ops_method)

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
    check_conv_input(x, self.kernel_size)
    kernel_shape = tuple(self.kernel_size) + (x.shape[-1], self.features)
    kernel = self.param("kernel", self._kernel_init(), kernel_shape,
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias and not self.batch_norm else None)
    gate_shape = kernel.shape if self.unstructured else (self.features,)
    log_alpha = self._log_alpha(gate_shape)  # float32: the gates are never narrowed
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)

    per_example = self.sample_per_example and not deterministic
    z = self._gates(log_alpha, deterministic, x.shape[:1] if per_example else ())
    if self.batch_norm:
      affine = lambda y, weights: batch_norm(
          self, y, deterministic=deterministic, weights=weights,
          momentum=self.bn_momentum, epsilon=self.bn_epsilon, axis_name=self.axis_name)
      return gated_conv_bn(x, kernel, z, self._conv, affine,
                           unstructured=self.unstructured, post=post)
    return gated_conv(x, kernel, bias, z.astype(x.dtype), self._conv,
                      unstructured=self.unstructured, post=post)
