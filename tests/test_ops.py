"""ops.py: the matmul forms of convolution and max pooling against lax / flax."""

import functools

import flax.linen as nn
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from jax import lax

from l0jax import ops


def _normal(rng, *shape):
  return jnp.asarray(rng.normal(size=shape), jnp.float32)


def _values_and_grads(fn, *args):
  """fn(*args) and the gradient of a random projection of it w.r.t. every arg."""
  shape = jax.eval_shape(fn, *args).shape
  cotangent = _normal(np.random.default_rng(1), *shape)
  out, vjp = jax.jit(lambda *a: jax.vjp(fn, *a))(*args)
  return out, vjp(cotangent)


def _assert_same_function(fast, plain, *args, rtol=2e-5, atol=2e-5):
  out_fast, grads_fast = _values_and_grads(fast, *args)
  out_plain, grads_plain = _values_and_grads(plain, *args)
  np.testing.assert_allclose(out_fast, out_plain, rtol=rtol, atol=atol)
  for a, b in zip(grads_fast, grads_plain):
    scale = float(jnp.max(jnp.abs(b))) + 1e-6
    np.testing.assert_allclose(a / scale, b / scale, rtol=rtol, atol=atol)


# ---------------------------------------------------------------- convolution
@pytest.mark.parametrize("padding,strides,dilation", [
    ("VALID", (1, 1), (1, 1)), ("SAME", (2, 3), (1, 1)), ("SAME", (1, 1), (2, 1)),
    (((2, 0), (1, 3)), (2, 3), (2, 1)), (((2, 0), (1, 3)), (1, 1), (1, 1))])
def test_im2col_conv_equals_lax_nhwc(padding, strides, dilation):
  rng = np.random.default_rng(0)
  x, k = _normal(rng, 3, 11, 10, 4), _normal(rng, 3, 2, 4, 5)
  conv = lambda method, x, k: ops.conv_general_dilated(
      x, k, strides, padding, rhs_dilation=dilation,
      dimension_numbers=("NHWC", "HWIO", "NHWC"), method=method)
  plain = lambda x, k: lax.conv_general_dilated(
      x, k, strides, padding, rhs_dilation=dilation,
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  _assert_same_function(functools.partial(conv, "matmul"), plain, x, k)


@pytest.mark.parametrize("dims,x_shape,k_shape", [
    (("NCHW", "OIHW", "NCHW"), (2, 3, 9, 8), (4, 3, 3, 2)),
    (("NHWC", "OIHW", "NCHW"), (2, 9, 8, 3), (4, 3, 3, 2)),
    (("NWC", "WIO", "NWC"), (2, 13, 3), (4, 3, 5)),
    (("NDHWC", "DHWIO", "NDHWC"), (2, 5, 6, 7, 2), (2, 3, 2, 2, 3)),
])
def test_im2col_conv_equals_lax_any_layout_and_rank(dims, x_shape, k_shape):
  rng = np.random.default_rng(0)
  x, k = _normal(rng, *x_shape), _normal(rng, *k_shape)
  spatial = len(x_shape) - 2
  strides = (1,) * (spatial - 1) + (2,)
  fast = lambda x, k: ops.conv_general_dilated(
      x, k, strides, "SAME", dimension_numbers=dims, method="matmul")
  plain = lambda x, k: lax.conv_general_dilated(
      x, k, strides, "SAME", dimension_numbers=dims)
  _assert_same_function(fast, plain, x, k)


@settings(max_examples=8, deadline=None)
@given(size=st.integers(5, 12), window=st.integers(1, 4), stride=st.integers(1, 3),
       cin=st.integers(1, 5), cout=st.integers(1, 5),
       padding=st.sampled_from(["VALID", "SAME"]), seed=st.integers(0, 2 ** 16))
def test_property_im2col_conv_equals_lax(size, window, stride, cin, cout, padding,
                                         seed):
  rng = np.random.default_rng(seed)
  x, k = _normal(rng, 2, size, size + 1, cin), _normal(rng, window, window, cin, cout)
  args = ((stride, stride), padding)
  dims = ("NHWC", "HWIO", "NHWC")
  _assert_same_function(
      lambda x, k: ops.conv_general_dilated(x, k, *args, dimension_numbers=dims,
                                            method="matmul"),
      lambda x, k: lax.conv_general_dilated(x, k, *args, dimension_numbers=dims),
      x, k)


@pytest.mark.parametrize("x_shape,k_shape,shifted", [
    ((2, 12, 12, 20), (5, 5, 20, 50), True),   # LeNet's conv2: rows shifted
    ((2, 28, 28, 1), (5, 5, 1, 20), False),    # LeNet's conv1: all taps gathered
    ((2, 9, 8, 6), (3, 3, 6, 6), True)])
def test_first_axis_taps_are_shifted_when_that_writes_less(x_shape, k_shape, shifted):
  rng = np.random.default_rng(0)
  x, k = _normal(rng, *x_shape), _normal(rng, *k_shape)
  fast = lambda x, k: ops.im2col_conv(x, k, (1, 1), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert (" split[" in str(jax.make_jaxpr(fast)(x, k))) == shifted
  _assert_same_function(fast, lambda x, k: lax.conv_general_dilated(
      x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")), x, k,
      atol=2e-4)  # outputs reach ~30: sums of 500 products, rounded in float32


@pytest.mark.parametrize("dims,x_shape,k_shape,strides,dilation,padding", [
    (("NWC", "WIO", "NWC"), (2, 13, 8), (4, 8, 3), (1,), (2,), "SAME"),
    (("NHWC", "HWIO", "NHWC"), (2, 11, 12, 8), (3, 2, 8, 3), (1, 2), (2, 3),
     ((1, 2), (0, 3))),
    (("NDHWC", "DHWIO", "NDHWC"), (2, 7, 5, 6, 6), (3, 2, 2, 6, 2), (1, 1, 2),
     (2, 1, 1), "SAME")])
def test_shift_form_with_dilation_strides_padding_in_1d_2d_3d(dims, x_shape, k_shape,
                                                             strides, dilation,
                                                             padding):
  rng = np.random.default_rng(3)
  x, k = _normal(rng, *x_shape), _normal(rng, *k_shape)
  args = dict(rhs_dilation=dilation, dimension_numbers=dims)
  fast = lambda x, k: ops.im2col_conv(x, k, strides, padding, **args)
  assert " split[" in str(jax.make_jaxpr(fast)(x, k))  # the shift form runs
  _assert_same_function(fast, lambda x, k: lax.conv_general_dilated(
      x, k, strides, padding, **args), x, k, atol=1e-4)


@pytest.mark.parametrize("taps,dilation", [(1, 1), (3, 1), (3, 2), (5, 1)])
def test_shifted_tap_sum_equals_numpy_and_transposes_to_tap_sized_pads(taps,
                                                                       dilation):
  rng = np.random.default_rng(taps * 10 + dilation)
  z = _normal(rng, 2, 4 + (taps - 1) * dilation, 3, taps, 5)
  z64 = np.asarray(z, np.float64)
  want = sum(z64[:, i * dilation:i * dilation + 4, :, i, :] for i in range(taps))
  np.testing.assert_allclose(ops._shifted_tap_sum(z, dilation), want, rtol=1e-6,
                             atol=1e-6)
  # The backward pass pads tap-sized pieces and concatenates them: no pad writes an
  # array of z's full shape (what made XLA:CPU slow).
  _, vjp = jax.vjp(lambda z: ops._shifted_tap_sum(z, dilation), z)
  cotangent = _normal(rng, *want.shape)
  backward = jax.make_jaxpr(vjp)(cotangent)
  pads = [e for e in backward.eqns if e.primitive.name == "pad"]
  assert all(e.outvars[0].aval.shape[-2] == 1 for e in pads)
  (grad,) = vjp(cotangent)
  want_grad = np.zeros_like(z64)
  for i in range(taps):
    want_grad[:, i * dilation:i * dilation + 4, :, i, :] += np.asarray(cotangent)
  np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-6)


def test_forward_mode_autodiff_of_the_matmul_conv():
  rng = np.random.default_rng(4)
  x, k = _normal(rng, 2, 12, 12, 20), _normal(rng, 5, 5, 20, 50)
  tx, tk = _normal(rng, *x.shape), _normal(rng, *k.shape)
  conv = lambda method: lambda x, k: ops.conv_general_dilated(
      x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
      method=method)
  _, fast = jax.jvp(conv("matmul"), (x, k), (tx, tk))
  _, plain = jax.jvp(conv("xla"), (x, k), (tx, tk))
  np.testing.assert_allclose(fast, plain, rtol=1e-4, atol=5e-4)


def test_bfloat16_shifted_taps_are_summed_in_float32():
  rng = np.random.default_rng(5)
  x, k = _normal(rng, 4, 12, 12, 20), _normal(rng, 5, 5, 20, 50)
  dims = ("NHWC", "HWIO", "NHWC")
  exact = lax.conv_general_dilated(x.astype(jnp.bfloat16).astype(jnp.float32),
                                   k.astype(jnp.bfloat16).astype(jnp.float32),
                                   (1, 1), "VALID", dimension_numbers=dims,
                                   precision="highest")
  got = ops.im2col_conv(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16), (1, 1),
                        "VALID", dimension_numbers=dims)
  assert got.dtype == jnp.bfloat16
  # One rounding to bfloat16 (8 bits): at most half an ulp of the result.
  ulp = 2.0 ** (np.floor(np.log2(np.abs(np.asarray(exact)) + 1e-30)) - 7)
  assert np.all(np.abs(np.asarray(got, np.float32) - exact) <= 0.5 * ulp + 1e-3)


def test_auto_runs_the_matmul_form_on_cpu():
  x, k = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
  dims = ("NHWC", "HWIO", "NHWC")
  hlo = {method: jax.jit(lambda x, k, m=method: ops.conv_general_dilated(
      x, k, (1, 1), "VALID", dimension_numbers=dims, method=m)).lower(x, k)
         .compile().as_text() for method in ("auto", "xla")}
  assert jax.default_backend() == "cpu"
  assert "convolution(" not in hlo["auto"]
  assert "convolution(" in hlo["xla"]


def test_grouped_and_input_dilated_convs_fall_back_to_lax():
  rng = np.random.default_rng(0)
  x, k = _normal(rng, 2, 7, 7, 4), _normal(rng, 3, 3, 2, 6)
  dims = ("NHWC", "HWIO", "NHWC")
  got = ops.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), lhs_dilation=(2, 2),
                                 dimension_numbers=dims, feature_group_count=2,
                                 method="matmul")
  want = lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), lhs_dilation=(2, 2),
                                  dimension_numbers=dims, feature_group_count=2)
  np.testing.assert_array_equal(got, want)


def test_conv_errors_are_clear():
  x, k = jnp.ones((1, 4, 4, 3)), jnp.ones((2, 2, 3, 1))
  dims = ("NHWC", "HWIO", "NHWC")
  with pytest.raises(ValueError, match="unknown ops method 'cudnn'"):
    ops.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=dims,
                             method="cudnn")
  with pytest.raises(ValueError, match="larger than the padded input"):
    ops.im2col_conv(x, jnp.ones((5, 5, 3, 1)), (1, 1), "VALID",
                    dimension_numbers=dims)
  with pytest.raises(ValueError, match="feature channels"):
    ops.im2col_conv(x, jnp.ones((2, 2, 2, 1)), (1, 1), "VALID",
                    dimension_numbers=dims)


def test_flax_conv_accepts_it_as_conv_general_dilated():
  rng = np.random.default_rng(0)
  x = _normal(rng, 2, 9, 9, 3)
  fast = nn.Conv(4, (3, 3), strides=2, conv_general_dilated=functools.partial(
      ops.conv_general_dilated, method="matmul"))
  plain = nn.Conv(4, (3, 3), strides=2)
  params = plain.init(jax.random.key(0), x)
  np.testing.assert_allclose(fast.apply(params, x), plain.apply(params, x),
                             rtol=2e-5, atol=2e-5)


# ---------------------------------------------------------------- max pooling
@pytest.mark.parametrize("shape,window", [
    ((3, 8, 8, 5), (2, 2)), ((3, 9, 11, 5), (2, 3)), ((2, 9, 9, 2), (3, 3)),
    ((2, 10, 4), (2,)), ((2, 4, 6, 4, 3), (2, 2, 2))])
def test_reshape_max_pool_equals_reduce_window(shape, window):
  x = _normal(np.random.default_rng(0), *shape)
  _assert_same_function(lambda x: ops.max_pool(x, window, method="matmul"),
                        lambda x: nn.max_pool(x, window, strides=window), x,
                        rtol=0, atol=0)


def test_relu_then_pool_gradient_equals_reduce_window_despite_zero_ties():
  x = _normal(np.random.default_rng(0), 4, 12, 12, 3) - 1.0  # many all-zero windows
  assert float(jnp.mean(nn.relu(x) == 0)) > 0.7
  _assert_same_function(
      lambda x: ops.max_pool(nn.relu(x), (2, 2), method="matmul"),
      lambda x: nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2)), x, rtol=0, atol=0)


def test_overlapping_or_padded_pools_use_reduce_window():
  x = _normal(np.random.default_rng(0), 2, 7, 7, 3)
  for kwargs in (dict(strides=(1, 1)), dict(padding="SAME")):
    np.testing.assert_array_equal(
        ops.max_pool(x, (2, 2), method="matmul", **kwargs),
        nn.max_pool(x, (2, 2), **{"strides": (2, 2), **kwargs}))
  with pytest.raises(ValueError, match="unknown ops method"):
    ops.max_pool(x, (2, 2), method="fast")


def test_xla_cpu_flushes_subnormal_results_to_zero():
  """Why long runs keep their speed on CPU (issue 7): XLA:CPU computes with
  flush-to-zero, so closed rows decaying toward 0 never become slow subnormals."""
  smallest_normal = jnp.finfo(jnp.float32).tiny
  assert np.float32(smallest_normal) * np.float32(0.5) > 0  # numpy: subnormal
  assert float(jax.jit(lambda x: x * 0.5)(smallest_normal)) == 0.0
  a = jnp.full((8, 8), 1e-20, jnp.float32)  # products 1e-40 are subnormal
  assert float(jax.jit(lambda a: a @ a)(a)[0, 0]) == 0.0
