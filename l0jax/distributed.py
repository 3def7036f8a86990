"""Multi-host runs on JAX's multi-controller runtime (``jax.distributed``).

One process per host runs the same ``train.py`` / ``eval.py`` command. Before anything
touches a device, the mains call :func:`initialize`, which decides from the config and
the environment whether this process is one of several and, if so, calls
``jax.distributed.initialize`` with bounded timeouts. Everything after that is the
single-host code path: the mesh spans every device of every process, each process
feeds its own slice of every global batch, process 0 writes the logs, orbax
checkpoints collectively.

When to join (``config.distributed``):

* ``"off"``: never (a single-process run, whatever the environment says).
* ``"on"``: always. Arguments left unset (coordinator address, process count,
  process id) are auto-detected by JAX on Cloud TPU, Slurm and Open MPI (or by the
  method named in ``config.cluster_detection_method``, e.g. ``"mpi4py"``).
* ``"auto"`` (default): join when the config or the environment asks for it:

  - a coordinator address (``config.coordinator_address`` or
    ``$JAX_COORDINATOR_ADDRESS``), more than one process (``config.num_processes`` or
    ``$JAX_NUM_PROCESSES``) or a ``config.cluster_detection_method`` is set;
  - a Slurm job step with more than one task (``srun``);
  - an Open MPI job with more than one rank (``mpirun``);
  - a Cloud TPU VM (GCE: libtpu installed and TPU chips attached; GKE:
    ``$TPU_WORKER_HOSTNAMES``). A single-host TPU VM simply becomes a run of one
    process.

Explicit values: ``config.coordinator_address`` / ``num_processes`` / ``process_id`` win
over ``$JAX_COORDINATOR_ADDRESS`` / ``$JAX_NUM_PROCESSES`` / ``$JAX_PROCESS_ID``, which win
over auto-detection. JAX itself also reads ``$JAX_LOCAL_DEVICE_IDS`` and
``$JAX_COORDINATOR_PORT``.

Failures are bounded in time:

* a process that cannot reach the coordinator, or whose peers do not all connect,
  exits with a one-line message after ``config.distributed_init_timeout_s``;
* a process that dies (or stops sending heartbeats) makes every other process stop
  about ``config.distributed_heartbeat_timeout_s`` later: JAX's coordination service
  detects the silent process and terminates the others with "Terminating process
  because the JAX distributed service detected fatal errors ... The following tasks
  are unhealthy (stopped sending heartbeats)". When process 0 (the coordinator) dies,
  the others stop at once;
* a process that raises ends at once (:func:`stop_all_on_error`), so the others
  follow as above instead of waiting at JAX's shutdown barrier;
* SIGTERM on any process (preemption): JAX's preemption service makes the processes
  agree on a step; the training loop saves a checkpoint at the end of the call that
  holds it (several steps run per call, ``config.steps_per_dispatch``) and raises
  :class:`Preempted` (:func:`reached_preemption_sync_point`).

A process that is alive but stuck (e.g. on a hung file system) keeps sending
heartbeats; the others then wait for it in the next collective.

On CPU, cross-process collectives need ``jax_cpu_collectives_implementation``; it is
set to ``"gloo"`` unless already chosen.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import importlib.util
import os
import sys
import threading
import traceback
from typing import Mapping, Optional

import jax

from l0jax import errors
from l0jax.errors import UserError

MODES = ("auto", "on", "off")
_ALIASES = {"auto": "auto", "on": "on", "off": "off", "true": "on", "1": "on",
            "yes": "on", "false": "off", "0": "off", "no": "off"}
ENV_ADDRESS = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
_GOOGLE_PCI_VENDOR = "0x1ae0"
# Seconds past distributed_init_timeout_s before the connect watchdog gives up (JAX's
# own connect gives up later than its nominal timeout, and with a less clear message).
_CONNECT_GRACE_S = 2
# A process silent this long counts as dead and every other process stops: the
# survivor of a kill -9 exits about this long after it (tests/test_multihost.py). JAX's
# own default (100 s) let a survivor wait 86-97 s; 30 s keeps it well under a minute
# and far above the gaps between heartbeats of a busy but live process.
DEFAULT_HEARTBEAT_TIMEOUT_S = 30


class DistributedError(UserError, RuntimeError):
  """Joining the multi-process run failed, or its settings are invalid (one line)."""


class Preempted(Exception):
  """The run stopped at a preemption sync point after saving a checkpoint there."""


@dataclasses.dataclass(frozen=True)
class Settings:
  """The arguments this process passes to ``jax.distributed.initialize``."""
  coordinator_address: Optional[str]  # None: auto-detected by JAX
  num_processes: Optional[int]
  process_id: Optional[int]
  cluster_detection_method: Optional[str]
  init_timeout_s: int
  heartbeat_timeout_s: int
  reason: str  # why this process joins a multi-process run (for messages)

  def describe(self) -> str:
    def show(v):
      return "auto" if v is None else v
    return (f"coordinator {show(self.coordinator_address)}, process "
            f"{show(self.process_id)} of {show(self.num_processes)}")


def _bad(field: str, value, allowed: str):
  raise DistributedError(f"config.{field}={value!r} is invalid: {allowed}")


def _env_int(environ: Mapping[str, str], name: str) -> Optional[int]:
  raw = environ.get(name, "").strip()
  if not raw:
    return None
  try:
    return int(raw)
  except ValueError:
    raise DistributedError(f"${name}={raw!r} is invalid: must be an integer") from None


def _cloud_tpu_vm(environ: Mapping[str, str]) -> bool:
  """A Cloud TPU VM (GKE: worker list in the environment; GCE: libtpu + TPU chips)."""
  if environ.get("TPU_WORKER_HOSTNAMES"):
    return True
  if importlib.util.find_spec("libtpu") is None:
    return False
  for path in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      with open(path) as f:
        if f.read().strip() == _GOOGLE_PCI_VENDOR:
          return True
    except OSError:
      continue
  return False


def _launcher(environ: Mapping[str, str]) -> Optional[str]:
  """The multi-process launcher this process runs under, if any (for "auto")."""
  def count(name):
    try:
      return int(environ.get(name, "1"))
    except ValueError:
      return 1
  if "SLURM_STEP_NODELIST" in environ and count("SLURM_NTASKS") > 1:
    return f"Slurm job step with {count('SLURM_NTASKS')} tasks"
  if count("OMPI_COMM_WORLD_SIZE") > 1:
    return f"Open MPI job with {count('OMPI_COMM_WORLD_SIZE')} ranks"
  if _cloud_tpu_vm(environ):
    return "Cloud TPU VM"
  return None


def settings(config, environ: Optional[Mapping[str, str]] = None) -> Optional[Settings]:
  """How this process joins a multi-process run, or None for a single-process run.

  Reads the config's "Distributed" fields and the environment (``os.environ`` by
  default); touches no device. Raises DistributedError on invalid values.
  """
  environ = os.environ if environ is None else environ
  mode = config.get("distributed", "off")
  if isinstance(mode, bool):
    mode = "on" if mode else "off"
  mode = _ALIASES.get(str(mode).strip().lower(), mode)  # --config.distributed=true
  if mode not in MODES:
    _bad("distributed", mode, f"allowed values are {', '.join(map(repr, MODES))}")

  address = str(config.get("coordinator_address", "") or "").strip()
  if not address:
    address = environ.get(ENV_ADDRESS, "").strip()
  if address and (":" not in address or not address.rsplit(":", 1)[1].isdigit()):
    _bad("coordinator_address", address, "must be 'host:port' (the host of process 0)")

  num = config.get("num_processes", -1)
  if not isinstance(num, int) or num == 0 or num < -1:
    _bad("num_processes", num, "must be an integer >= 1, or -1 (from the environment)")
  num = num if num > 0 else _env_int(environ, ENV_NUM_PROCESSES)
  if num is not None and num < 1:
    raise DistributedError(f"${ENV_NUM_PROCESSES}={num} is invalid: must be >= 1")

  pid = config.get("process_id", -1)
  if not isinstance(pid, int) or pid < -1:
    _bad("process_id", pid, "must be an integer >= 0, or -1 (from the environment)")
  pid = pid if pid >= 0 else _env_int(environ, ENV_PROCESS_ID)
  if pid is not None and num is not None and not 0 <= pid < num:
    raise DistributedError(
        f"process id {pid} (config.process_id or ${ENV_PROCESS_ID}) is invalid: must lie "
        f"in [0, {num}) for {num} processes")

  method = str(config.get("cluster_detection_method", "") or "").strip() or None
  init_timeout = config.get("distributed_init_timeout_s", 300)
  heartbeat_timeout = config.get("distributed_heartbeat_timeout_s",
                                 DEFAULT_HEARTBEAT_TIMEOUT_S)
  for field, value in (("distributed_init_timeout_s", init_timeout),
                       ("distributed_heartbeat_timeout_s", heartbeat_timeout)):
    if not isinstance(value, int) or value < 1:
      _bad(field, value, "must be an integer number of seconds >= 1")

  if mode == "off":
    return None
  if mode == "on":
    reason = "config.distributed='on'"
  elif address:
    reason = "a coordinator address is set"
  elif num is not None and num > 1:
    reason = f"{num} processes are configured"
  elif method:
    reason = f"config.cluster_detection_method={method!r}"
  else:
    reason = _launcher(environ)
    if reason is None:
      return None
  return Settings(address or None, num, pid, method, init_timeout, heartbeat_timeout,
                  reason)


def _connect_failed(s: Settings):
  """Runs in a timer thread when connecting takes too long: one clear line, then exit."""
  where = f"the coordinator at {s.coordinator_address}" if s.coordinator_address else (
      "the coordinator")
  sys.stderr.write(
      f"\nerror: process {s.process_id if s.process_id is not None else '?'} could not "
      f"join the {s.num_processes or '?'}-process run within "
      f"{s.init_timeout_s} s (config.distributed_init_timeout_s): either {where} is not "
      "reachable from this host or not every process was started. Start the same "
      "command on every host with the same coordinator address and process count, "
      "and check that process 0 runs and its port is open.\n")
  sys.stderr.flush()
  os._exit(1)  # pylint: disable=protected-access


def initialize(config, environ: Optional[Mapping[str, str]] = None) -> bool:
  """Joins the multi-process run the config / environment asks for (see module doc).

  Must run before anything touches a device (``jax.devices()``, any computation).
  Returns True when this process is part of a multi-process run (``jax.distributed``
  initialized, by this call or earlier), False for a single-process run. Raises
  DistributedError (a one-line message) on invalid settings or when JAX cannot work
  out the missing arguments; exits the process with a one-line message when the other
  processes cannot be reached within ``config.distributed_init_timeout_s``.
  """
  s = settings(config, environ)
  if jax.distributed.is_initialized():
    return True
  if s is None:
    return False
  if getattr(jax.config, "jax_cpu_collectives_implementation", None) is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = dict(coordinator_address=s.coordinator_address,
                num_processes=s.num_processes, process_id=s.process_id,
                initialization_timeout=s.init_timeout_s,
                heartbeat_timeout_seconds=s.heartbeat_timeout_s,
                # A process that finished waits this long at exit for the others.
                shutdown_timeout_seconds=max(s.heartbeat_timeout_s, 60))
  if s.cluster_detection_method:
    kwargs["cluster_detection_method"] = s.cluster_detection_method
  watchdog = threading.Timer(s.init_timeout_s + _CONNECT_GRACE_S, _connect_failed, (s,))
  watchdog.daemon = True
  watchdog.start()
  try:
    jax.distributed.initialize(**kwargs)
  except (ValueError, TypeError) as e:
    raise DistributedError(
        f"cannot join a multi-process run ({s.reason}; {s.describe()}): "
        f"{str(e).rstrip('.')}. Set "
        "config.coordinator_address / num_processes / process_id (or "
        f"${ENV_ADDRESS} / ${ENV_NUM_PROCESSES} / ${ENV_PROCESS_ID}), or "
        "--config.distributed=off for a single-process run") from None
  except RuntimeError as e:
    raise DistributedError(f"jax.distributed.initialize failed ({s.describe()}): "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                           ) from None
  finally:
    watchdog.cancel()
  return True


def reached_preemption_sync_point(step: int) -> bool:
  """True at the step where every process should save a checkpoint and stop.

  In a multi-process run JAX's preemption service catches SIGTERM (a scheduler's
  preemption / ``scancel`` notice, on any one process) and the processes agree on a
  common step. Call it with every training step on every process. Always False in a
  single-process run (SIGTERM then simply ends the process).
  """
  if not jax.distributed.is_initialized():
    return False
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  try:
    return multihost_utils.reached_preemption_sync_point(step)
  except RuntimeError:  # preemption service disabled (jax_enable_preemption_service)
    return False


@contextlib.contextmanager
def stop_all_on_error():
  """In a multi-process run, an exception ends this process at once.

  Without it, a process that raises would first wait (up to the shutdown timeout) at
  JAX's shutdown barrier for peers that are blocked in a collective waiting for it.
  Ending it at once lets the others fail fast: a collective with it fails (connection
  closed), or the coordination service misses its heartbeats within
  ``config.distributed_heartbeat_timeout_s``. An expected failure
  (``l0jax.errors.UserError``, ``OSError``, Ctrl-C) is reported in one line, anything
  else with its traceback. Single-process runs, ``sys.exit`` and :class:`Preempted`
  (every process stops at the same step and leaves together) are left alone.
  """
  try:
    yield
  except (SystemExit, Preempted):
    raise
  except BaseException as e:  # pylint: disable=broad-except
    if not jax.distributed.is_initialized():
      raise
    message = errors.expected_message(e)
    if message is None or errors.show_tracebacks():
      traceback.print_exc()
      message = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    sys.stderr.write(
        f"\nerror: process {jax.process_index()} of {jax.process_count()} failed "
        f"({message}); stopping it now, the other processes stop within "
        "config.distributed_heartbeat_timeout_s.\n")
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(errors.exit_code(e))  # pylint: disable=protected-access


def is_main_process() -> bool:
  """True on process 0, the one process that writes logs, plots and reports."""
  return jax.process_index() == 0


def shutdown() -> None:
  """Leaves the multi-process run together with the other processes (no-op if single).

  Call it at the end of a successful run: it waits (at most
  ``max(distributed_heartbeat_timeout_s, 60)`` s) until every process got there, so
  process 0 does not take the coordination service down while others still use it.
  """
  if jax.distributed.is_initialized():
    jax.distributed.shutdown()
