"""metrics.jsonl, TensorBoard tags and resume, the progress bar, the end-of-run table."""

import glob
import json
import os
import struct

import pytest

from l0jax import reporting


def read_events(logdir):
  """(step, tag, value) of every scalar, and the steps of SessionLog.START events, in
  file order, from TensorBoard event files (TFRecord framing, read by hand)."""
  from tensorboardX.proto import event_pb2
  scalars, starts = [], []
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    with open(path, "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      if event.HasField("session_log") and event.session_log.status == 1:  # START
        starts.append(event.step)
        scalars = [s for s in scalars if s[0] < event.step]  # TensorBoard's purge rule
      for value in event.summary.value:
        scalars.append((event.step, value.tag, value.simple_value))
  return scalars, starts


def test_metrics_log_drops_records_after_the_resumed_step(tmp_path):
  log = reporting.MetricsLog(str(tmp_path), 0, tensorboard=False, active=True)
  for step in (1, 2, 3):
    log.write({"step": step, "loss": float(step)})
  log.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 4, "lo')  # the write a killed process died in
  assert [r["step"] for r in reporting.read_metrics(str(tmp_path))] == [1, 2, 3]
  reporting.MetricsLog(str(tmp_path), 2, tensorboard=False, active=True).close()
  assert [r["step"] for r in reporting.read_metrics(str(tmp_path))] == [1, 2]
  reporting.MetricsLog(str(tmp_path), 0, tensorboard=False, active=False).close()
  assert len(reporting.read_metrics(str(tmp_path))) == 2  # other processes write nothing


def test_tensorboard_tags_and_resume_without_duplicates(tmp_path):
  def run(start, stop):
    log = reporting.MetricsLog(str(tmp_path), start, tensorboard=True, active=True)
    for step in range(start + 1, stop + 1):
      log.write({"step": step, "loss": 1.0 / step, "multipliers": [0.1, 0.2],
                 "layer_densities": {"fc1": 0.5}, "expected_density": 0.4})
      if step % 2 == 0:
        log.write({"step": step, "eval": True, "test_error": 0.1,
                   "expected_density": 0.45})
    log.close()
  run(0, 5)  # dies after step 5; its last checkpoint was step 2
  run(2, 6)
  scalars, starts = read_events(str(tmp_path / "tensorboard"))
  assert starts == [1, 3]  # a run that starts over hides its predecessor's points too
  keys = [(step, tag) for step, tag, _ in scalars]
  assert len(keys) == len(set(keys)), "a (step, tag) point is written twice"
  tags = {tag for _, tag in keys}
  assert tags == {"train/loss", "train/multipliers/0", "train/multipliers/1",
                  "train/layer_densities/fc1", "train/expected_density",
                  "eval/test_error", "eval/expected_density"}  # no "eval" boolean
  assert sorted(step for step, tag in keys if tag == "train/loss") == [1, 2, 3, 4, 5, 6]
  assert sorted(step for step, tag in keys if tag == "eval/test_error") == [2, 4, 6]


def test_progress_fields_name_every_multiplier():
  record = {"loss": 0.5, "accuracy": 0.9, "expected_density": 0.3}
  assert reporting.progress_fields({**record, "multipliers": [0.25]}, ("fc1",)) == {
      "loss": "0.500", "acc": "0.900", "density": "0.300", "lambda": "0.25"}
  fields = reporting.progress_fields({**record, "multipliers": [0.1, 0.0, 2.5]},
                                     ("fc1", "fc2", "fc3"))
  assert (fields["lambda_fc1"], fields["lambda_fc2"], fields["lambda_fc3"]) == (
      "0.1", "0", "2.5")
  assert "lambda" not in reporting.progress_fields({**record, "multipliers": []}, ())


def test_constraint_rows_and_the_summary_table():
  rows = reporting.constraint_rows([0.33004, 0.3301, 0.2], [0.33, 0.33, 0.5],
                                   ["fc1 density", "fc2 density", "fc3 density"])
  assert [r["met"] for r in rows] == [True, False, True]  # met to the 0.01 points shown
  summary = {"test_error": 0.1234, "expected_density": 0.3, "test_time_density": 0.29,
             "n_params_kept": 10, "n_params_dense": 30, "kept_units": {"fc1": 3},
             "total_units": {"fc1": 9}, "constraints": rows}
  table = reporting.format_summary(summary)
  lines = table.splitlines()
  assert "  test error          12.34%" in lines
  assert any(l.split() == ["fc1", "density", "33.00%", "33.00%", "yes"] for l in lines)
  assert any(l.split() == ["fc2", "density", "33.01%", "33.00%", "no", "(+0.01", "pts)"]
             for l in lines), table
  assert "constraint" not in reporting.format_summary(
      {k: v for k, v in summary.items() if k != "constraints"})


def test_summary_is_json_serialisable():
  rows = reporting.constraint_rows([0.1], [0.2], ["model density"])
  assert json.loads(json.dumps(rows)) == rows
  with pytest.raises(KeyError):
    reporting.format_summary({})


def test_equality_rows_are_met_only_at_the_target():
  rows = reporting.constraint_rows([0.33004, 0.32, 0.2], [0.33, 0.33, 0.5],
                                   ["a", "b", "c"], ("eq", "eq", "ineq"))
  assert [r["met"] for r in rows] == [True, False, True]
  assert [r["kind"] for r in rows] == ["eq", "eq", "ineq"]
  table = reporting.format_summary({"test_error": 0.1, "constraints": rows})
  assert any(l.split() == ["b", "32.00%", "33.00%", "no", "(-1.00", "pts)"]
             for l in table.splitlines()), table
