"""What ``config.log_egf`` costs: ms per training step with it off and on, in one run.

    python benchmarks/egf_cost.py                     # MLP 784-300-100, batch 100
    python benchmarks/egf_cost.py --models=mlp,lenet5 --repeats=9

The trainer's real steps (``benchmarks/step_time.py``'s runner: 10 steps per jitted
call, pmap on one device, constrained L0 step) on random images; both variants are
timed in turns (round-robin, median of ``--repeats`` rounds), so compare the ratio, not
absolute times across runs. With ``log_egf`` on, the steps that log (every
``log_every_steps``, 100 in the default config used here) run one more forward and
backward pass of the loss under ``lax.cond``
(``l0jax.science.egf.gradient_flow_metrics_on``), the others skip it; off, the step is
the same program as before the option existed (a Python-level ``if``).
"""

import argparse

import step_time  # benchmarks/step_time.py, next to this file (puts the repo on sys.path)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="mlp")
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--steps", type=int, default=50)
  args = parser.parse_args()
  for model in args.models.split(","):
    batch = step_time.BATCH_SIZES[model]
    runners, steps = {}, {}
    for on in (False, True):
      config = step_time.step_config(model, gated=True)
      config.log_egf = on
      name = f"log_egf={on}"
      runners[name] = step_time.step_runner(config, batch)
      steps[name] = args.steps
    ms = step_time.time_round_robin(runners, steps, args.repeats)
    off, on = ms["log_egf=False"], ms["log_egf=True"]
    print(f"{model} batch {batch}: log_egf off {off:.3f} ms/step, on {on:.3f} ms/step, "
          f"on/off {on / off:.2f}x", flush=True)


if __name__ == "__main__":
  main()
