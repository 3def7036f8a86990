"""A run's working directory: verified checkpoints, the recorded config, the lock.

::

    WORKDIR/
      config.json             the config of the run (written at its first start; on resume
                              only the fields of RESUMABLE_FIELDS may differ, and are updated)
      lock                    held (flock) by the train.py process using WORKDIR; its pid inside
      checkpoints/<step>/     orbax checkpoint of the state (any pytree of arrays)
      checksums/<step>.json   sha256 of every array of that step, written atomically after
                              orbax committed the step and it read back identical
      rejected_checkpoints/   steps that failed verification on resume, moved aside
      metrics.jsonl, tensorboard/, eval.json, *.png   (l0jax.reporting, eval.py)

What it guarantees:

* :meth:`Checkpoints.restore` returns the newest step whose arrays hash to its recorded
  checksum and are finite; a step that is unreadable, corrupt, unverified or non-finite
  is skipped with one ``warning:`` line (and, on resume, moved aside). In a multi-process
  run the processes agree on the step.
* :meth:`Checkpoints.save` refuses non-finite state, saves synchronously, reads the step
  back and compares, then records the checksum; only then are old steps deleted
  (keeping the newest ``keep`` verified ones), so a checkpoint is never deleted while no
  newer one is verified.
* :func:`open_for_training` takes an exclusive lock (released by the OS when the process
  dies) and refuses a config that differs from the recorded one in a field that alters
  the run, naming the fields.

Nothing here knows the state's fields: checksums, finiteness and restore work on any
pytree of arrays (zero-size leaves are not saved and come back from the template).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from typing import Any, Dict, Iterator, List, Mapping, Optional

import jax
import numpy as np

from l0jax import errors
from l0jax.errors import UserError

__all__ = ["WorkdirError", "RESUMABLE_FIELDS", "FIXED_FIELDS", "Checkpoints",
           "open_for_training", "require_run", "read_config", "config_changes",
           "config_for_eval", "require_writable",
           "tree_digest", "tree_is_finite"]

CONFIG_FILE = "config.json"
LOCK_FILE = "lock"
CHECKPOINTS_DIR = "checkpoints"
CHECKSUMS_DIR = "checksums"
REJECTED_DIR = "rejected_checkpoints"
_DELETING = ".deleting"
_ORBAX_TMP = ".orbax-checkpoint-tmp"


class WorkdirError(UserError, RuntimeError):
  """The workdir cannot be used as asked (one line naming the path and the fix)."""


# ======================================================================================
# Which config fields may change when a run is resumed
# ======================================================================================
_LOGGING = "changes what is logged or saved, not what is trained"
_SAME_STEPS = "changes how the same steps are computed (equal up to float rounding)"
_PROCESSES = "changes how the processes are started (see the README's Multi-host)"

# Every field of configs/default.py is in exactly one of these (tests/test_workdir.py).
RESUMABLE_FIELDS: Dict[str, str] = {
    "data_dir": "where the same data is read from",
    "idx_dir": "where the same data is read from",
    "num_epochs": "the run's length: raise it to train longer (not with "
                  "lr_schedule='cosine', whose schedule depends on it)",
    "num_train_steps": "the run's length, as num_epochs",
    "log_every_steps": _LOGGING,
    "eval_every_steps": _LOGGING,
    "checkpoint_every_steps": _LOGGING,
    "keep_checkpoints": _LOGGING,
    "progress_bar": _LOGGING,
    "tensorboard": _LOGGING,
    "log_egf": _LOGGING,
    "steps_per_dispatch": _SAME_STEPS,
    "parallel": _SAME_STEPS,
    "ops_method": _SAME_STEPS,
    "data_workers": "how many processes decode the same batches",
    "distributed": _PROCESSES,
    "coordinator_address": _PROCESSES,
    "num_processes": _PROCESSES,
    "process_id": _PROCESSES,
    "cluster_detection_method": _PROCESSES,
    "distributed_init_timeout_s": _PROCESSES,
    "distributed_heartbeat_timeout_s": _PROCESSES,
}
# Fields that define the run: a resumed run (or eval.py) must use the recorded value.
FIXED_FIELDS = (
    "dataset", "fake_data", "train_split", "eval_split", "augment", "image_size",
    "crop_padding", "rrc_scale", "eval_resize", "mean", "std",
    "model", "gated", "mlp_features", "lenet_conv_features", "lenet_dense_features",
    "unstructured", "sample_per_example", "test_gate", "rescale_init", "gate_source",
    "dep_input_size", "dep_bias_init", "depth",
    "widen_factor", "width_scale", "dropout", "gate_block_outputs", "droprate_init",
    "bn_momentum", "dtype", "method", "constraint", "constraint_kind", "target_density",
    "layer_targets", "density_mode", "penalty",
    "formulation", "penalty_coefficient", "scheme", "dual_restarts", "optimizer",
    "learning_rate", "lr_schedule", "lr_milestones", "lr_decay_factor", "momentum",
    "weight_decay", "label_smoothing", "gate_optimizer", "gate_learning_rate",
    "dual_optimizer", "dual_learning_rate", "nupi_kp", "batch_size", "seed",
)
_LENGTH_FIELDS = ("num_epochs", "num_train_steps")


def _json_config(config) -> Dict[str, Any]:
  """A ConfigDict (or mapping) as plain JSON values (tuples become lists)."""
  if hasattr(config, "to_json"):
    return json.loads(config.to_json())
  return json.loads(json.dumps(dict(config)))


def config_changes(recorded: Mapping[str, Any], config) -> List[str]:
  """``"field: recorded -> now"`` for every field that may not change on resume.

  Fields missing on either side (a config written by another l0jax version) are not
  compared. The run's length may change unless the recorded ``lr_schedule`` depends on
  it.
  """
  now = _json_config(config)
  recorded = _json_config(recorded)
  fixed_length = recorded.get("lr_schedule", "constant") != "constant"
  changes = []
  for field in sorted(set(recorded) & set(now)):
    if field in RESUMABLE_FIELDS and not (fixed_length and field in _LENGTH_FIELDS):
      continue
    if recorded[field] != now[field]:
      changes.append(f"{field}: {recorded[field]!r} -> {now[field]!r}")
  return changes


def _tuples(value):
  """JSON lists back to the tuples configs use."""
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def read_config(workdir: str):
  """The recorded config of ``workdir`` as a ConfigDict, or None if there is none."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    with open(path) as f:
      values = json.load(f)
  except FileNotFoundError:
    return None
  except (OSError, ValueError) as e:
    raise WorkdirError(
        f"{path} is unreadable ({type(e).__name__}: {_first_line(e)}); restore it from a "
        "copy, or use a new --workdir") from None
  if not isinstance(values, dict):
    raise WorkdirError(f"{path} does not hold a config (a JSON object); restore it or "
                       "use a new --workdir")
  return ml_collections.ConfigDict(_tuples(values))


def _record_config(workdir: str, config) -> None:
  atomic_write(os.path.join(workdir, CONFIG_FILE),
               json.dumps(_json_config(config), indent=1) + "\n")


# ======================================================================================
# Small file helpers
# ======================================================================================
def _first_line(e: BaseException) -> str:
  text = str(e)
  return next((line.strip() for line in text.splitlines() if line.strip()),
              type(e).__name__)


def _fsync_dir(path: str) -> None:
  with contextlib.suppress(OSError):
    fd = os.open(path, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)


def atomic_write(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` so that readers see the old file or the whole new one."""
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
  _fsync_dir(os.path.dirname(path))


def _warn(message: str) -> None:
  prefix = f"process {jax.process_index()}: " if jax.process_count() > 1 else ""
  sys.stderr.write(f"warning: {prefix}{message}\n")
  sys.stderr.flush()


# ======================================================================================
# Checksums
# ======================================================================================
def tree_digest(tree) -> Dict[str, Any]:
  """sha256 of every non-empty leaf (dtype, shape and bytes) and of all of them.

  ``{"sha256": total, "leaves": {path: sha256}}``; paths are ``jax.tree_util.keystr``.
  """
  leaves = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    a = np.asarray(leaf)
    if a.size == 0:
      continue
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    leaves[jax.tree_util.keystr(path)] = h.hexdigest()
  total = hashlib.sha256(json.dumps(leaves, sort_keys=True).encode()).hexdigest()
  return {"sha256": total, "leaves": leaves}


def tree_is_finite(tree) -> bool:
  """True when no floating-point leaf holds a NaN or an infinity."""
  for leaf in jax.tree.leaves(tree):
    a = np.asarray(leaf)
    if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all():
      return False
  return True


def _first_difference(expected: Mapping[str, str], actual: Mapping[str, str]) -> str:
  for key in sorted(set(expected) | set(actual)):
    if expected.get(key) != actual.get(key):
      return key
  return "the leaf list"


def _drop_empty(tree):
  """Zero-size arrays (a dense baseline has no multipliers) -> None: orbax cannot save them."""
  return jax.tree.map(lambda x: None if np.size(x) == 0 else x, tree)


def _abstract(template):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype),
                      _drop_empty(template))


def _fill_empty(restored, template):
  """Puts the zero-size leaves that were not saved back from ``template``."""
  leaves = iter(jax.tree.leaves(restored))
  return jax.tree.map(lambda t: t if np.size(t) == 0 else next(leaves), template)


def _flat_shapes(tree) -> Dict[str, tuple]:
  """'a/b/0/c' -> shape, for trees of arrays or orbax metadata (NamedTuples saved as dicts)."""
  def name(k):
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        return str(getattr(k, attr))
    return str(k)
  return {"/".join(name(k) for k in path): tuple(getattr(leaf, "shape", ()))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _shape_mismatches(saved, expected) -> List[str]:
  saved_flat, expected_flat, out = _flat_shapes(saved), _flat_shapes(expected), []
  for key, shape in expected_flat.items():
    if key not in saved_flat:
      out.append(f"{key} missing in checkpoint")
    elif saved_flat[key] != shape:
      out.append(f"{key}: checkpoint {saved_flat[key]} vs model {shape}")
  out += [f"{key} in checkpoint but not in model"
          for key in saved_flat.keys() - expected_flat.keys()]
  return out


# ======================================================================================
# Checkpoints
# ======================================================================================
class _Rejected(Exception):
  """A step that cannot be restored (the message says why)."""


class Checkpoints:
  """Verified orbax checkpoints of a state pytree in ``WORKDIR/checkpoints``.

  Args:
    workdir: the run's directory.
    keep: how many verified steps :meth:`save` keeps (None: all).
  """

  def __init__(self, workdir: str, keep: Optional[int] = None):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, CHECKPOINTS_DIR)
    self.checksum_directory = os.path.join(self.workdir, CHECKSUMS_DIR)
    self.keep = keep

  # ---- listing -----------------------------------------------------------------------
  def step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def checksum_path(self, step: int) -> str:
    return os.path.join(self.checksum_directory, f"{step}.json")

  def steps(self) -> List[int]:
    """Every step directory orbax committed (verified or not), ascending."""
    try:
      names = os.listdir(self.directory)
    except FileNotFoundError:
      return []
    return sorted(int(n) for n in names
                  if n.isdigit() and os.path.isdir(os.path.join(self.directory, n)))

  def verified_steps(self) -> List[int]:
    """Steps whose checksum was recorded after saving, ascending (not re-checked)."""
    return [s for s in self.steps() if os.path.isfile(self.checksum_path(s))]

  def latest_verified(self) -> Optional[int]:
    steps = self.verified_steps()
    return steps[-1] if steps else None

  def describe_latest(self) -> str:
    """For messages: which checkpoint a rerun resumes from."""
    step = self.latest_verified()
    if step is None:
      return f"there is no checkpoint in {self.directory} yet"
    return f"the last good checkpoint is step {step} in {self.directory}"

  # ---- saving ------------------------------------------------------------------------
  @staticmethod
  def _checkpointer():
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    return ocp.Checkpointer(ocp.StandardCheckpointHandler())

  def save(self, step: int, state) -> None:
    """Saves ``state`` (host arrays, the same on every process) as ``step``; collective.

    Raises WorkdirError when the state is not finite, the save fails (e.g. a full
    disk) or the step reads back different from what was saved.
    """
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    host = jax.tree.map(np.asarray, state)
    if not tree_is_finite(host):
      raise WorkdirError(f"refusing to save non-finite state as checkpoint step {step} "
                         f"in {self.directory}")
    digest = tree_digest(host)
    primary = jax.process_index() == 0
    if primary:
      # A step saved earlier but not verified (moved aside on resume) never gets here,
      # but a stale checksum must not vouch for the new files while they are written.
      with contextlib.suppress(FileNotFoundError):
        os.remove(self.checksum_path(step))
    try:
      with errors.held_back_stderr():
        self._checkpointer().save(self.step_path(step),
                                  args=ocp.args.StandardSave(_drop_empty(host)),
                                  force=True)
      back = self._restore_arrays(step, host)
    except Exception as e:  # pylint: disable=broad-except
      if primary:
        self._remove_leftovers(step)
      raise WorkdirError(f"cannot save checkpoint step {step} in {self.directory}: "
                         f"{type(e).__name__}: {_first_line(e)}") from e
    if tree_digest(back)["sha256"] != digest["sha256"]:
      raise WorkdirError(
          f"checkpoint step {step} in {self.directory} reads back different from what "
          "was saved: the storage corrupts data; use a --workdir on other storage")
    if not primary:
      return
    try:
      os.makedirs(self.checksum_directory, exist_ok=True)
      atomic_write(self.checksum_path(step),
                   json.dumps({"step": step, **digest}, indent=1) + "\n")
    except OSError as e:
      raise WorkdirError(f"cannot record the checksum of checkpoint step {step} in "
                         f"{self.checksum_directory}: {e.strerror or _first_line(e)}"
                         ) from e
    self._collect_garbage()

  def _collect_garbage(self) -> None:
    """Deletes every step older than the newest ``keep`` verified ones."""
    verified = self.verified_steps()
    if self.keep is None or len(verified) <= self.keep:
      return
    oldest_kept = verified[-self.keep]
    for step in self.steps():
      if step < oldest_kept:
        self._delete(step)

  def _delete(self, step: int) -> None:
    """Unverifies, then renames (atomic), then removes a step."""
    with contextlib.suppress(FileNotFoundError):
      os.remove(self.checksum_path(step))
    doomed = os.path.join(self.directory, f"{step}{_DELETING}")
    os.replace(self.step_path(step), doomed)
    shutil.rmtree(doomed, ignore_errors=True)

  def _remove_leftovers(self, step: Optional[int] = None) -> None:
    """orbax temporary directories of unfinished saves and half-deleted steps."""
    try:
      names = os.listdir(self.directory)
    except FileNotFoundError:
      return
    for name in names:
      if (name.endswith(_DELETING) or _ORBAX_TMP in name) and (
          step is None or name.split(".")[0] == str(step)):
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  # ---- restoring ---------------------------------------------------------------------
  def _restore_arrays(self, step: int, template):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    restored = self._checkpointer().restore(
        self.step_path(step), args=ocp.args.StandardRestore(_abstract(template)))
    return _fill_empty(restored, template)

  def _check_shapes(self, step: int, template) -> None:
    try:
      metadata = self._checkpointer().metadata(self.step_path(step))
    except Exception as e:  # pylint: disable=broad-except
      raise _Rejected(f"is unreadable ({type(e).__name__}: {_first_line(e)})") from e
    metadata = getattr(metadata, "item_metadata", metadata)
    saved = getattr(metadata, "tree", metadata)
    problems = _shape_mismatches(saved, _abstract(template)) if saved is not None else []
    if problems:
      raise WorkdirError(
          f"checkpoint step {step} in {self.directory} was written for a different "
          f"model or formulation ({len(problems)} mismatches, first: {problems[0]}); "
          "use another --workdir or the config that wrote it")

  def load(self, step: int, template):
    """The verified state of ``step`` shaped like ``template``; raises _Rejected."""
    try:
      with open(self.checksum_path(step)) as f:
        record = json.load(f)
      expected = record["sha256"], dict(record["leaves"])
    except FileNotFoundError:
      raise _Rejected("has no checksum (its save did not finish)") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise _Rejected(f"has an unreadable checksum file ({type(e).__name__})") from None
    with errors.held_back_stderr():  # orbax / tensorstore print a traceback per failed read
      self._check_shapes(step, template)
      try:
        state = self._restore_arrays(step, template)
      except Exception as e:  # pylint: disable=broad-except
        raise _Rejected(f"is unreadable ({type(e).__name__}: {_first_line(e)})") from e
    digest = tree_digest(state)
    if digest["sha256"] != expected[0]:
      where = _first_difference(expected[1], digest["leaves"])
      raise _Rejected(f"is corrupt (checksum mismatch in {where})")
    if not tree_is_finite(state):
      raise _Rejected("holds non-finite values")
    return state

  def restore(self, template, repair: bool = False):
    """The newest verified step as a pytree shaped like ``template``, or None.

    Every step skipped gets one ``warning:`` line. ``repair=True`` (train.py, process
    0) moves the skipped steps to ``WORKDIR/rejected_checkpoints`` so that the resumed
    run can save those step numbers again. Raises WorkdirError when a checkpoint was
    written for another model.
    """
    bound, state, step = None, None, -1
    while True:
      state, step = self._newest_good(template, bound)
      steps = _all_processes(step)
      if min(steps) == max(steps):
        break
      bound = min(steps)  # another process could not read a newer one: go back
    if repair and jax.process_index() == 0:
      self._remove_leftovers()
      for newer in [s for s in self.steps() if s > step]:
        self._reject(newer)
    return state if step >= 0 else None

  def _newest_good(self, template, bound: Optional[int]):
    for step in reversed(self.steps()):
      if bound is not None and step > bound:
        continue
      try:
        return self.load(step, template), step
      except _Rejected as e:
        _warn(f"checkpoint step {step} in {self.directory} {e}; skipped")
    return None, -1

  def _reject(self, step: int) -> None:
    os.makedirs(os.path.join(self.workdir, REJECTED_DIR), exist_ok=True)
    target = os.path.join(self.workdir, REJECTED_DIR, str(step))
    suffix = 1
    while os.path.lexists(target):
      target = os.path.join(self.workdir, REJECTED_DIR, f"{step}.{suffix}")
      suffix += 1
    os.replace(self.step_path(step), target)
    with contextlib.suppress(FileNotFoundError):
      os.replace(self.checksum_path(step), target + ".checksum.json")
    _warn(f"moved checkpoint step {step} to {target}")


def _all_processes(value: int) -> List[int]:
  """``value`` of every process (one collective when there are several)."""
  if jax.process_count() == 1:
    return [value]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return [int(v) for v in np.ravel(multihost_utils.process_allgather(np.int64(value)))]


# ======================================================================================
# The lock and the workdir's life cycle
# ======================================================================================
class _Lock:
  """An exclusive ``flock`` on ``WORKDIR/lock``; the OS drops it when the process dies."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.fd = None

  def _holder(self) -> str:
    for _ in range(20):  # the holder writes its pid right after locking
      with contextlib.suppress(OSError):
        with open(self.path) as f:
          text = f.read().strip()
        if text:
          return text
      time.sleep(0.05)
    return "a process that has not written its pid yet"

  def acquire(self) -> "_Lock":
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise WorkdirError(f"cannot write to {os.path.dirname(self.path)} "
                         f"({e.strerror}): train.py needs a writable --workdir") from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        raise
      raise WorkdirError(
          f"{os.path.dirname(self.path)} is in use by another train.py "
          f"({self._holder()}); wait for it to end or stop it, or use another "
          "--workdir") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    self.fd = fd
    return self

  def release(self) -> None:
    if self.fd is not None:
      os.close(self.fd)  # closing the last descriptor drops the flock
      self.fd = None


@contextlib.contextmanager
def open_for_training(workdir: str, config) -> Iterator[Checkpoints]:
  """WORKDIR for train.py: created, locked, its config checked and recorded.

  Process 0 takes the lock (held until the block ends), refuses a config that differs
  from ``config.json`` in a field outside RESUMABLE_FIELDS, and records the config.
  Yields the run's :class:`Checkpoints` (keeping ``config.keep_checkpoints``).
  """
  workdir = os.path.abspath(workdir)
  lock = None
  if jax.process_index() == 0:
    try:
      os.makedirs(workdir, exist_ok=True)
    except OSError as e:
      raise WorkdirError(f"cannot create --workdir={workdir} ({e.strerror})") from None
    lock = _Lock(workdir).acquire()
    try:
      _check_and_record(workdir, config)
    except BaseException:
      lock.release()
      raise
  try:
    yield Checkpoints(workdir, keep=config.keep_checkpoints)
  finally:
    if lock is not None:
      lock.release()


def _check_and_record(workdir: str, config) -> None:
  recorded = read_config(workdir)
  if recorded is None and Checkpoints(workdir).steps():
    raise WorkdirError(
        f"{workdir} holds checkpoints but no {CONFIG_FILE} (not written by this "
        "l0jax's train.py), so a resume cannot be checked: use a new --workdir")
  if recorded is not None:
    changes = config_changes(recorded, config)
    if changes:
      raise WorkdirError(
          f"the config differs from the one {workdir} was started with "
          f"({'; '.join(changes)}): resume with the recorded values "
          f"({os.path.join(workdir, CONFIG_FILE)}) or use another --workdir")
  _record_config(workdir, config)


def config_for_eval(workdir: str, given=None):
  """The config eval.py evaluates ``workdir`` with: the recorded one by default; a
  ``given`` one must agree with it in every field outside RESUMABLE_FIELDS."""
  recorded = read_config(workdir)
  if given is None:
    if recorded is None:
      raise WorkdirError(f"{workdir} has no {CONFIG_FILE} (not written by this "
                         "l0jax's train.py): pass the --config it was trained with")
    return recorded
  if recorded is not None:
    changes = config_changes(recorded, given)
    if changes:
      raise WorkdirError(
          f"--config differs from the config {workdir} was trained with "
          f"({'; '.join(changes)}): drop --config to use the recorded one")
  return given


def require_run(workdir: str) -> str:
  """The absolute path of an existing workdir (eval.py); never creates anything."""
  path = os.path.abspath(workdir)
  if not os.path.isdir(path):
    raise WorkdirError(f"--workdir={workdir} does not exist: pass the --workdir that "
                       "train.py wrote")
  return path


def require_writable(workdir: str) -> None:
  """Raises unless files can be written into ``workdir`` (a probe that leaves nothing
  behind: permission bits do not bind root, a read-only file system does)."""
  try:
    os.remove(tempfile.mkstemp(prefix=".l0jax-probe-", dir=workdir)[1])
  except OSError as e:
    raise WorkdirError(f"--workdir={workdir} is not writable ({e.strerror}): eval.py "
                       "writes eval.json and plots there") from None
