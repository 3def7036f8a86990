"""help(l0jax) and the README list the public API; the README's snippets run."""

import math
import pathlib
import re
import types

import numpy as np

import l0jax

README = (pathlib.Path(__file__).parent.parent / "README.md").read_text()


def run_readme_snippet(heading: str) -> dict:
  """Executes the first python block after ``heading``; returns its globals."""
  section = README.split(heading, 1)[1]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  scope = {}
  exec(compile(code, "README.md", "exec"), scope)  # pylint: disable=exec-used
  return scope


def public_names():
  return sorted(n for n, v in vars(l0jax).items()
                if not n.startswith("_") and not isinstance(v, types.ModuleType))


def test_help_lists_every_public_name():
  assert len(public_names()) > 20
  missing = [n for n in public_names() if n not in l0jax.__doc__]
  assert not missing, f"l0jax.__doc__ does not list {missing}"


def test_readme_lists_every_public_name():
  section = README.split("## Public API", 1)[1].split("\n## ", 1)[0]
  missing = [n for n in public_names() if f"`{n}`" not in section
             and f"{n}," not in section and f"{n}`" not in section]
  assert not missing, f"the README's Public API section does not list {missing}"
  for module in ("l0jax.gates", "l0jax.gating", "l0jax.nnx", "l0jax.density",
                 "l0jax.constrained", "l0jax.purge"):
    assert module in section


def test_readme_constrained_example_reaches_the_kkt_point():
  scope = run_readme_snippet("## Constrained optimisation")
  np.testing.assert_allclose(scope["x"], 1.0, atol=1e-3)
  np.testing.assert_allclose(scope["problem"].named(scope["cstate"].multipliers)["x_max"],
                             2.0, atol=1e-2)


def test_readme_own_module_example_works_with_density_report():
  scope = run_readme_snippet("## Gates in your own model")
  report, log_alpha = scope["report"], np.asarray(scope["params"]["log_alpha"], float)
  p_open = 1 / (1 + np.exp(-(log_alpha - 2 / 3 * math.log(0.1 / 1.1))))
  np.testing.assert_allclose(report.model_expected, p_open.mean(), rtol=1e-6)
  median = np.clip(1 / (1 + np.exp(-log_alpha / (2 / 3))) * 1.2 - 0.1, 0, 1)
  assert int(report.kept_units["Dense_0/kernel"]) == int(np.sum(median > 0))


def test_readme_science_example():
  scope = run_readme_snippet("## Sparse-network science tools")
  np.testing.assert_allclose(float(scope["flow"]), 1.5, rtol=1e-6)
  np.testing.assert_allclose(float(scope["norm"]), math.sqrt(9 + 1e4 + 16 + 4), rtol=1e-6)
  twin = scope["twin"]
  assert twin.widths == (784, 31, 58, 10)
  np.testing.assert_allclose(twin.relative_error,
                             (31 * 784 / 24000 - 1, 31 * 58 / 1800 - 1, 580 / 300 - 1))
  assert scope["result"].best_profile == scope["best"]
