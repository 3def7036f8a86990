"""Expected failures print one line and exit non-zero; bugs keep their traceback."""

import errno
import os
import subprocess
import sys

import pytest

from l0jax import errors

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Oops(errors.UserError):
  pass


@pytest.mark.parametrize("exc,code,line", [
    (Oops("config.x=1 is invalid:\n  must be 2"), 1, "error: config.x=1 is invalid: must be 2"),
    (KeyboardInterrupt(), 130, "error: interrupted (Ctrl-C)"),
    (OSError(errno.ENOSPC, "No space left on device", "/w/metrics.jsonl"), 1,
     "error: No space left on device: /w/metrics.jsonl"),
    (FileExistsError("/x exists; pass --overwrite"), 1,
     "error: /x exists; pass --overwrite"),
])
def test_expected_failures_are_one_line(exc, code, line, capsys, monkeypatch):
  monkeypatch.delenv(errors.DEBUG_ENV, raising=False)
  with pytest.raises(SystemExit) as info:
    with errors.one_line_errors():
      raise exc
  assert info.value.code == code
  assert capsys.readouterr().err == line + "\n"


def test_bugs_and_debug_mode_keep_the_traceback(monkeypatch):
  monkeypatch.delenv(errors.DEBUG_ENV, raising=False)
  with pytest.raises(ZeroDivisionError):
    with errors.one_line_errors():
      1 / 0  # pylint: disable=pointless-statement
  monkeypatch.setenv(errors.DEBUG_ENV, "1")
  with pytest.raises(Oops):
    with errors.one_line_errors():
      raise Oops("shown with its traceback")
  monkeypatch.setenv(errors.DEBUG_ENV, "0")
  assert not errors.show_tracebacks()


def test_system_exit_passes_through():
  with pytest.raises(SystemExit) as info:
    with errors.one_line_errors():
      sys.exit(3)
  assert info.value.code == 3


def test_bad_flags_are_one_line(tmp_path):
  """A typo in a config field, a missing config file, a bad config argument."""
  for args, expected in (
      (["--config=configs/fashion_mnist_mlp.py", "--config.learnin_rate=1"],
       "error: unknown config field 'learnin_rate' Did you mean \"learning_rate\""),
      (["--config=configs/missing.py"], "error: --config=configs/missing.py: [Errno 2]"),
      (["--config=configs/fashion_mnist_mlp.py:tiny"], "unknown config argument 'tiny'"),
  ):
    proc = subprocess.run([sys.executable, "train.py", f"--workdir={tmp_path / 'w'}", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (
        proc.stderr)
  assert not (tmp_path / "w").exists()
