"""Convolution and max pooling written the way each backend runs them fastest.

XLA:CPU runs small convolutions, and above all their gradients, several times slower
than a matrix multiply of the same FLOPs, and the gradient of ``lax.reduce_window``
max pooling (``select_and_scatter``) is slower still. ``python
benchmarks/step_time.py --compare`` measures both forms of every op of LeNet-5-Caffe
and the whole training step; the README shows its table.

Every function takes ``method``, one of :data:`METHODS`:

* ``"matmul"``: formulations that XLA:CPU turns into matrix multiplies and cheap
  elementwise loops. :func:`conv_general_dilated` gathers the receptive fields with
  strided slices into one patch array (im2col) and contracts it with the reshaped
  kernel in a single ``dot_general``; where it writes less, the taps along the first
  spatial axis are not gathered but summed as row shifts of the product (see
  :func:`im2col_conv`). :func:`max_pool`
  splits each spatial axis into ``(out, window)`` and takes pairwise ``maximum`` over
  the window axes, whose gradient is a select.
* ``"xla"``: ``lax.conv_general_dilated`` and ``flax.linen.max_pool``
  (``lax.reduce_window``) themselves.
* ``"auto"`` (default): ``"matmul"`` when lowering for CPU, ``"xla"`` on every other
  platform (``lax.platform_dependent``), where cuDNN and the TPU's convolution units
  beat any rewrite.

:func:`conv_general_dilated` is a drop-in for ``lax.conv_general_dilated`` (pass it as
``flax.linen.Conv(conv_general_dilated=...)``); input dilation and grouped
convolutions always run XLA's convolution, overlapping or padded pools always
``reduce_window``.

Both forms compute the same function, up to float32 rounding of sums taken in another
order (tests/test_ops.py checks outputs and gradients against ``lax``). One difference
at ties: where several inputs of a pooling window share the maximum, ``maximum``'s
gradient splits the cotangent between them, while ``select_and_scatter`` gives it all to
the first. Ties have probability zero for continuous inputs, and the all-zero windows a
ReLU makes carry no gradient either way (ReLU's derivative at 0 is 0).
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

METHODS = ("auto", "matmul", "xla")

__all__ = ["METHODS", "conv_general_dilated", "im2col_conv", "max_pool"]

Padding = Union[str, Sequence[Tuple[int, int]]]


def _check_method(method: str) -> None:
  if method not in METHODS:
    raise ValueError(f"unknown ops method {method!r}; allowed: {METHODS}")


def _as_tuple(value, n: int, name: str) -> Tuple[int, ...]:
  if value is None:
    return (1,) * n
  if isinstance(value, int):
    return (value,) * n
  value = tuple(int(v) for v in value)
  if len(value) != n:
    raise ValueError(f"{name} must have {n} entries, one per spatial dim, got {value}")
  return value


def im2col_conv(lhs, rhs, window_strides, padding: Padding, rhs_dilation=None,
                dimension_numbers=None, precision=None, preferred_element_type=None):
  """``lax.conv_general_dilated`` (no input dilation, no groups) as patches @ kernel.

  Inputs and outputs follow ``dimension_numbers`` exactly as in ``lax``; internally the
  input is brought to ``(N, spatial..., C)`` and the kernel to ``(spatial..., I, O)``
  (no-op transposes for the usual NHWC / HWIO layouts).

  The receptive fields are gathered (im2col) over every spatial axis but the first.
  The taps along the first axis are not gathered when its stride is 1, it has more
  than one tap and the product below writes less than the full patches would
  (``rows * O < rows_out * kw * C``: LeNet's conv2, not its one-channel conv1): one
  matrix multiply contracts the patches with the kernel of every first-axis tap at
  once, ``(N, H, W', kw * C) @ (kw * C, kh * O)``, and the output is the sum of ``kh``
  row shifts of that product. Against gathering all ``kh * kw`` taps this copies
  ``kh`` times less, gives the multiply ``kh`` times more output columns (XLA:CPU runs
  skinny products slowly) and costs ``H / H'`` times the FLOPs. Otherwise (a
  first-axis stride above 1 would leave most shifted rows unused) every axis is
  gathered. For floating inputs narrower than float32 the shifted products are
  summed in float32 (as XLA's convolution accumulates) and rounded once.
  """
  spatial = lhs.ndim - 2
  dims = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  lhs_spec, rhs_spec, out_spec = dims.lhs_spec, dims.rhs_spec, dims.out_spec
  x = jnp.transpose(lhs, (lhs_spec[0],) + tuple(lhs_spec[2:]) + (lhs_spec[1],))
  w = jnp.transpose(rhs, tuple(rhs_spec[2:]) + (rhs_spec[1], rhs_spec[0]))
  if x.shape[-1] != w.shape[-2]:
    raise ValueError(f"input has {x.shape[-1]} feature channels but the kernel "
                     f"expects {w.shape[-2]}")
  strides = _as_tuple(window_strides, spatial, "window_strides")
  dilation = _as_tuple(rhs_dilation, spatial, "rhs_dilation")
  window = w.shape[:spatial]
  effective = tuple((k - 1) * d + 1 for k, d in zip(window, dilation))
  if isinstance(padding, str):
    pads = lax.padtype_to_pads(x.shape[1:-1], effective, strides, padding)
  else:
    pads = tuple(tuple(int(p) for p in pair) for pair in padding)
    if len(pads) != spatial:
      raise ValueError(f"padding must have {spatial} (low, high) pairs, got {padding}")
  x = lax.pad(x, jnp.zeros((), x.dtype),
              ((0, 0, 0),) + tuple((lo, hi, 0) for lo, hi in pads) + ((0, 0, 0),))
  out = tuple((n - e) // s + 1 for n, e, s in zip(x.shape[1:-1], effective, strides))
  if min(out) < 1:
    raise ValueError(f"the kernel window {effective} (dilated) is larger than the "
                     f"padded input {x.shape[1:-1]}")
  # Shift the first axis's taps when its stride is 1 and the product the shift form
  # writes, (rows, kh * O) per output column, is smaller than the patches the full
  # gather writes, (rows out, kh * kw * C). With stride 1 every padded row is read.
  rows = x.shape[1]
  gathered_size = math.prod(window[1:]) * x.shape[-1]
  shift_first = (strides[0] == 1 and window[0] > 1
                 and rows * w.shape[-1] < out[0] * gathered_size)
  gathered = range(1 if shift_first else 0, spatial)
  patches = []
  for offset in itertools.product(*(range(window[a]) for a in gathered)):
    start, limit, step = [0] * x.ndim, list(x.shape), [1] * x.ndim
    for a, o in zip(gathered, offset):
      start[1 + a] = o * dilation[a]
      limit[1 + a] = start[1 + a] + (out[a] - 1) * strides[a] + 1
      step[1 + a] = strides[a]
    patches.append(lax.slice(x, start, limit, step))
  patches = patches[0] if len(patches) == 1 else jnp.concatenate(patches, axis=-1)
  taps = window[0] if shift_first else 1
  # (gathered taps..., I, [first-axis taps,] O) -> (gathered taps * I, taps * O).
  kernel = jnp.moveaxis(w, 0, -2) if shift_first else w
  kernel = kernel.reshape(-1, taps * w.shape[-1])
  accumulate = preferred_element_type
  narrow_float = (jnp.issubdtype(patches.dtype, jnp.floating)
                  and jnp.finfo(patches.dtype).bits < 32)
  if shift_first and accumulate is None and narrow_float:
    accumulate = jnp.float32
  # A 2-D product: XLA:CPU lays out the backward pass's products worse for the
  # N-D form of the same contraction (extra transposes of the cotangent).
  y = lax.dot_general(patches.reshape(-1, patches.shape[-1]), kernel,
                      (((1,), (0,)), ((), ())), precision=precision,
                      preferred_element_type=accumulate)
  y = y.reshape(patches.shape[:-1] + (taps, w.shape[-1]))
  if shift_first:
    y = _shifted_tap_sum(y, dilation[0])
    if accumulate is not preferred_element_type:
      y = y.astype(jnp.result_type(patches.dtype, kernel.dtype))
  else:
    y = y[..., 0, :]
  # y is (N, spatial..., O); put each logical dim where out_spec wants it.
  perm = [0] * y.ndim
  perm[out_spec[0]] = 0
  perm[out_spec[1]] = y.ndim - 1
  for i, axis in enumerate(out_spec[2:]):
    perm[axis] = 1 + i
  return jnp.transpose(y, perm)


def _shifted_tap_sum(z, dilation: int):
  """``y[:, r] = sum_i z[:, r + i * dilation, ..., i, :]`` over the rows ``r`` that
  every tap reaches; ``z`` is ``(N, rows, ..., taps, O)``.

  ``z`` is split into its taps first (``lax.split``), so that autodiff's transpose is
  one concatenation of tap-sized, row-shifted copies of the output cotangent, which
  XLA:CPU writes in one pass. Slicing each tap out of ``z`` directly transposes to
  pads of the full shape of ``z``, which XLA:CPU can materialize one by one before
  adding them (3x slower for LeNet's conv2). Plain JAX ops, so forward mode works.
  """
  taps = z.shape[-2]
  out_rows = z.shape[1] - (taps - 1) * dilation
  pieces = lax.split(z, (1,) * taps, axis=z.ndim - 2)
  return functools.reduce(jnp.add, (
      piece[:, i * dilation:i * dilation + out_rows, ..., 0, :]
      for i, piece in enumerate(pieces)))


def conv_general_dilated(lhs, rhs, window_strides, padding: Padding,
                         lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                         feature_group_count: int = 1, batch_group_count: int = 1,
                         precision=None, preferred_element_type=None, *,
                         method: str = "auto"):
  """``lax.conv_general_dilated`` with a choice of implementation (see module doc).

  ``method`` is ``"auto"`` (im2col on CPU, XLA elsewhere), ``"matmul"`` (im2col) or
  ``"xla"``. Input dilation, grouped convolutions and empty kernels (a purged layer
  left with no channels) always use XLA's convolution.

  Raises:
    ValueError: for an unknown ``method``.
  """
  _check_method(method)

  def xla(lhs, rhs):
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, batch_group_count=batch_group_count,
        precision=precision, preferred_element_type=preferred_element_type)

  def im2col(lhs, rhs):
    return im2col_conv(lhs, rhs, window_strides, padding, rhs_dilation=rhs_dilation,
                       dimension_numbers=dimension_numbers, precision=precision,
                       preferred_element_type=preferred_element_type)

  plain = (feature_group_count == 1 and batch_group_count == 1
           and all(d == 1 for d in _as_tuple(lhs_dilation, lhs.ndim - 2,
                                             "lhs_dilation")))
  if method == "xla" or not plain or rhs.size == 0 or lhs.size == 0:
    return xla(lhs, rhs)
  if method == "matmul":
    return im2col(lhs, rhs)
  return lax.platform_dependent(lhs, rhs, cpu=im2col, default=xla)


def max_pool(x, window_shape: Sequence[int], strides: Optional[Sequence[int]] = None,
             padding: Padding = "VALID", *, method: str = "auto"):
  """``flax.linen.max_pool`` over ``(N, spatial..., C)`` inputs, same arguments.

  With ``method="matmul"`` (and ``"auto"`` on CPU), non-overlapping ``VALID`` windows
  (``strides == window_shape``) are a reshape and pairwise ``maximum`` over the window
  axes; a remainder that does not fill a window is dropped, as ``VALID`` does. Other
  pools, and ``method="xla"``, are ``flax.linen.max_pool`` (``lax.reduce_window``).
  """
  _check_method(method)
  window = tuple(int(w) for w in window_shape)
  strides = window if strides is None else tuple(int(s) for s in strides)
  spatial = len(window)

  def xla(x):
    return nn.max_pool(x, window, strides=strides, padding=padding)

  if (method == "xla" or strides != window or padding != "VALID"
      or x.ndim != spatial + 2):
    return xla(x)
  if method == "auto":
    return lax.platform_dependent(x, cpu=functools.partial(_reshape_max_pool,
                                                           window=window),
                                  default=xla)
  return _reshape_max_pool(x, window)


def _reshape_max_pool(x, window: Tuple[int, ...]):
  spatial = len(window)
  out = tuple(n // w for n, w in zip(x.shape[1:-1], window))
  x = x[(slice(None),) + tuple(slice(0, o * w) for o, w in zip(out, window))]
  split = (x.shape[0],) + sum(((o, w) for o, w in zip(out, window)), ()) + (x.shape[-1],)
  y = x.reshape(split)
  # Pairwise maxima over each window axis (last first, so earlier axes keep their
  # index): elementwise ops whose gradients are selects. XLA:CPU runs this backward
  # pass 4x faster than the VJP of one reduce-max over the window axes.
  for axis in reversed(range(2, 2 + 2 * spatial, 2)):
    parts = [lax.index_in_dim(y, k, axis, keepdims=False) for k in range(y.shape[axis])]
    y = functools.reduce(jnp.maximum, parts)
  return y
