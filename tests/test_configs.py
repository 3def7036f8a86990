"""Every config file builds a valid config, in full and as :runlocal, and its model."""

import glob
import importlib
import os

import pytest

from l0jax import train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
               if not p.endswith(("__init__.py", "default.py")))


def test_every_config_file_is_tested():
  assert {"fashion_mnist_mlp", "cifar10_wrn28_10", "imagenet2012_resnet50",
          "fashion_mnist_resnet20"} <= set(NAMES)


@pytest.mark.parametrize("variant", ["", "runlocal"])
@pytest.mark.parametrize("name", NAMES)
def test_config_validates_and_builds_its_model(name, variant, tmp_path):
  config = importlib.import_module(f"configs.{name}").get_config(variant or None)
  config.fake_data = True  # no dataset is prepared here
  config.data_dir = str(tmp_path)
  train_lib.validate_config(config, 4 if config.batch_size % 4 == 0 else 1)
  params = train_lib.abstract_params(config)
  task = train_lib.make_task(config, 1000)
  assert len(task.layer_names) == (len(train_lib.density.gated_layers(params))
                                   if config.gated else 0)
  if variant:
    assert config.num_train_steps <= 600 and config.eval_every_steps > 0
