"""Inline models in a child process: ``deployment: {inline: process}``.

A model inside the ingress (``inline: true``) saves the Serve hop (2-3 ms of CPU on 2 cores)
but shares the ingress's interpreter: while it holds the GIL the ingress's own work and the
other inline models wait, and if it crashes (a native library's segfault, memory exhaustion)
the ingress and every request in it go with it. ``inline: process`` keeps the first property
and drops the two costs: the adapter runs in a child process of the ingress replica (its own
interpreter), called over a local socket pair with the envelopes as protobuf bytes.

* **Parallelism**: the calling thread waits on the socket without the GIL, so a ``parallel``
  node's branches really overlap (spaCy's NER beside the TF-IDF tier, in triage).
* **Fault isolation**: a child that dies fails only the calls it was running, with
  :class:`~modelweave.errors.ReplicaLost` (the executor retries idempotent models within the
  request's deadline), and the next call starts a fresh child. An input that kills a child
  twice is refused from then on (``ModelError``), so it cannot keep the model restarting.
* **A hung model is stopped**: a child still working :data:`HANG_GRACE_S` after every caller of
  its call gave up (the rows' deadlines, :data:`~modelweave.trace.rows_deadline`) is killed, the call fails
  ``DEADLINE_EXCEEDED`` and the next call starts a fresh child, instead of every later call
  waiting behind an input the model never finishes. Such an input counts as a kill above.
* **Model CPU stays honest**: each span's ``cpuMs`` is the child's thread CPU inside
  ``predict``, as in-process; pickling and the socket are framework cost and not counted.

What it does not give: the model scales with the ingress, not on its own (a deployment does
that), and one child serves one call at a time (its batcher, ``deployment.batching``, forms
the batches). A child exits when its socket closes, when its parent process is gone (checked
every second while idle), or when :meth:`ProcessAdapter.close` runs.

Run as ``python -m modelweave.process_isolation <fd> <parent pid> <node name>``; only
:class:`ProcessAdapter` does that.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

from google.protobuf.message import Message as ProtoMessage

from modelweave.adapters.base import ModelAdapter, build_adapter
from modelweave.errors import DeadlineExceeded, FailedPrecondition, ModelError, ReplicaLost
from modelweave.messages import PART_CLASSES
from modelweave.trace import rows_deadline
from modelweave.v1 import messages_pb2 as pb

#: What a child runs (``python -m``), with the arguments ``<fd> <parent pid> <node name>``.
CHILD_MODULE = "modelweave.process_isolation"
#: Longest wait for a child to import and load its model (spaCy: ~3 s; an ONNX encoder: ~1 s).
LOAD_TIMEOUT_S = 600.0
#: How long :meth:`ProcessAdapter.close` waits for a child to exit before killing it.
EXIT_TIMEOUT_S = 5.0
#: How long past every caller's deadline a child may go on with a call before it is killed as hung.
#: Killing costs a model reload (spaCy: ~3 s), so a call that merely overran (a busy machine)
#: finishes; a model stuck on an input is stopped.
HANG_GRACE_S = 5.0
#: A single input that killed this many children is refused (ModelError, not retried) from then on.
POISON_KILLS = 2
#: Inputs whose kills are remembered (the oldest are forgotten first).
POISON_MEMORY = 1024


def child_node(argv: Sequence[str]) -> str | None:
    """The model node a child process runs, from its command line (``argv``, split on spaces);
    None for any other process. Benchmarks use it to find and name the children."""
    if CHILD_MODULE in argv[:-1]:
        return argv[-1]
    return None


class ProcessAdapter(ModelAdapter):
    """Runs another adapter in a child process; same contract as the adapter it wraps.

    Args:
        impl: The model node's ``impl`` (adapter class or function path).
        params: The node's ``params``.
        name: The model node's name (error messages, the child's process title).
        nice: CPU priority of the child (the node's ``deployment.nice``, as its own replica
            would have): under overload the ingress keeps the CPU to answer and shed.
    """

    blocking = True  # the calling thread waits on a socket (GIL released), never the event loop

    def __init__(self, impl: str, params: Mapping[str, Any], *, name: str = "", nice: int = 0) -> None:  # noqa: D107
        inner = build_adapter(impl, params)  # validates params here, loads nothing
        self.impl, self.raw_params, self.name, self.nice = impl, dict(params), name or impl, nice
        self.params = inner.params
        # The wrapped adapter's contract, per instance (ModelAdapter declares these per class).
        vars(self).update(consumes=inner.consumes, produces=inner.produces, idempotent=inner.idempotent)
        self._part = PART_CLASSES[inner.produces]
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        #: Children started so far (1 after ``load``; each restart adds one).
        self.starts = 0
        self._kills: dict[bytes, int] = {}  # children killed per single input (digest), oldest first
        self._finalizer = weakref.finalize(self, _stop, [None, None])

    @property
    def pid(self) -> int | None:
        """The running child's process id (None before ``load`` or after it died)."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def load(self) -> None:
        """Starts the child and waits until it has loaded the model.

        Raises:
            FailedPrecondition: the child could not import or load the adapter (its error).
        """
        with self._lock:
            self._start()

    def predict(self, batch: Sequence[pb.Message]) -> list[ProtoMessage]:
        """Outputs of the wrapped adapter's ``predict`` on ``batch`` (run in the child)."""
        return self.predict_with_cpu(batch)[0]

    def predict_with_cpu(self, batch: Sequence[pb.Message]) -> tuple[list[ProtoMessage], float]:
        """Outputs and the child's CPU milliseconds for the whole batch.

        Raises:
            ReplicaLost: the child died during the call (it is restarted on the next one).
            ChildStopped: the child was still working when the rows' deadline passed; it was killed.
            ModelError: a single input killed (or hung) a child for the second time (see :data:`POISON_KILLS`).
            ModelweaveError: the wrapped adapter's error, typed as in-process.
        """
        rows = [m.SerializeToString() for m in batch]
        key = hashlib.blake2b(rows[0], digest_size=16).digest() if len(rows) == 1 else None
        if key is not None and self._kills.get(key, 0) >= POISON_KILLS:
            raise self._poisoned()
        try:
            reply = self._call(("predict", rows), rows_deadline.get())
        except (ReplicaLost, ChildStopped):
            if key is None:
                raise
            # The executor retries a lost call; an input that kills the model every time would
            # otherwise restart (and reload) the child until the request's deadline.
            self._kills[key] = self._kills.pop(key, 0) + 1
            while len(self._kills) > POISON_MEMORY:
                self._kills.pop(next(iter(self._kills)))
            if self._kills[key] >= POISON_KILLS:
                raise self._poisoned() from None
            raise
        payloads, cpu_ms = reply
        outputs: list[ProtoMessage] = []
        for data in payloads:
            part = self._part()
            part.ParseFromString(data)
            outputs.append(part)
        return outputs, cpu_ms

    def _poisoned(self) -> ModelError:
        return ModelError(f"this input killed the process running model {self.name!r} {POISON_KILLS} times; "
                          "it is not run again")

    def health(self) -> None:
        """Raises unless the child is alive and the wrapped adapter's ``health`` passes."""
        self._call(("health",))

    def close(self) -> None:
        """Stops the child (closes its socket; kills it if it does not exit in time)."""
        with self._lock:
            self._stop_child()

    # -- internals ------------------------------------------------------------------------

    def _call(self, request: tuple[Any, ...], deadline: float | None = None) -> Any:
        """One exchange with the child. :data:`HANG_GRACE_S` past ``deadline`` (wall clock: no
        caller waits any more) the child is killed and :class:`ChildStopped` raised, so a model
        stuck on one input does not hold every later call behind it."""
        with self._lock:
            if self._conn is None:
                self._start()  # the previous child died: a fresh one serves this call
            conn = self._conn
            assert conn is not None
            try:
                conn.send(request)
                if deadline is not None and not conn.poll(max(0.0, deadline + HANG_GRACE_S - time.time())):
                    self._kill_child()
                    raise ChildStopped(f"model {self.name!r} had not answered when its callers' deadline passed; "
                                       "its process was stopped and the next call starts a new one")
                status, value = conn.recv()
            except (EOFError, OSError) as exc:
                code = self._reap()
                raise ReplicaLost(f"the process running model {self.name!r} died during the call "
                                  f"(exit code {code}; {type(exc).__name__}); the next call starts a new one") from None
        if status == "ok":
            return value
        raise value

    def _start(self) -> None:
        parent_end, child_end = socket.socketpair()
        env = dict(os.environ)
        # The child imports the adapter as the parent would: Ray's runtime_env and tests put
        # modules on sys.path, not always on PYTHONPATH.
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        try:
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", CHILD_MODULE, str(child_end.fileno()), str(os.getpid()),
                 self.name],  # the name only labels the process (ps, benchmarks/process_cpu.py)
                pass_fds=(child_end.fileno(),), env=env, stdin=subprocess.DEVNULL)
        finally:
            child_end.close()
        conn = Connection(parent_end.detach())
        self._proc, self._conn = proc, conn
        # Stops the child when the adapter is collected or the interpreter exits (finalizers
        # run at exit); a killed ingress closes the socket, and the child exits on its own.
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _stop, [proc, conn])
        self.starts += 1
        try:
            conn.send(("load", self.impl, json.dumps(self.raw_params), self.nice))
            if not conn.poll(LOAD_TIMEOUT_S):
                raise FailedPrecondition(f"model {self.name!r}: its process did not load within {LOAD_TIMEOUT_S:.0f} s")
            status, value = conn.recv()
        except (EOFError, OSError):
            code = self._reap()
            raise FailedPrecondition(f"model {self.name!r}: its process exited while loading (exit code {code}); "
                                     "see the replica's log") from None
        except FailedPrecondition:
            self._stop_child()
            raise
        if status != "ok":
            self._stop_child()
            raise FailedPrecondition(f"model {self.name!r} failed to load in its process: {value}")

    def _reap(self) -> int | None:
        """Forgets a dead (or broken) child; returns its exit code."""
        proc = self._proc
        self._stop_child()
        return proc.returncode if proc is not None else None

    def _stop_child(self) -> None:
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        _stop([proc, conn])

    def _kill_child(self) -> None:
        """Kills a child that is busy (a closed socket would only be noticed after its call)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
        self._stop_child()


class ChildStopped(DeadlineExceeded):
    """A child process was killed because it was still working when every caller had given up."""


def lower_cpu_priority(nice: int) -> None:
    """Raises this process's niceness to ``nice`` (never lowers it; needs no privilege).

    On a saturated machine the model threads would otherwise compete on equal terms with
    Serve's proxy and the ingress, and a request that is only going to be refused still
    waits seconds for a CPU slice to be refused. Model replicas and group replicas call it
    with their ``deployment.nice``; a child process of the ingress with its node's.
    """
    current = os.nice(0)
    if nice > current:
        os.nice(nice - current)


def _stop(handles: list[Any]) -> None:
    """Closes a child's socket and waits for it to exit; kills it when it does not."""
    proc, conn = handles
    if conn is not None:
        conn.close()
    if proc is None:
        return
    try:
        proc.wait(EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- the child ----------------------------------------------------------------------------


def _serve(conn: Connection, parent_pid: int) -> None:
    """The child's loop: load one adapter, then answer predict and health calls until EOF."""
    adapter: ModelAdapter | None = None
    while True:
        while not conn.poll(1.0):
            if os.getppid() != parent_pid:  # the parent is gone (killed): nobody will call again
                return
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return
        if request[0] == "load":
            try:
                lower_cpu_priority(request[3])
                adapter = build_adapter(request[1], json.loads(request[2]))
                adapter.load()
                reply: tuple[str, Any] = ("ok", None)
            except Exception as exc:
                reply = ("error", f"{type(exc).__name__}: {exc}")
        else:
            reply = _answer(adapter, request)
        try:
            conn.send(reply)
        except OSError:  # the parent went away during the call
            return
        except Exception as exc:  # the reply did not pickle (an error type of the adapter's own)
            conn.send(("error", ModelError(f"model failed: {type(reply[1]).__name__}: {reply[1]} ({exc})")))


def _answer(adapter: ModelAdapter | None, request: tuple[Any, ...]) -> tuple[str, Any]:
    """The reply to a predict or health call: ``("ok", value)`` or ``("error", typed error)``."""
    from modelweave.adapters.base import predict_measured
    from modelweave.model_calls import typed_model_error

    try:
        if adapter is None:
            raise FailedPrecondition("no model loaded")
        if request[0] == "predict":
            batch = [pb.Message.FromString(data) for data in request[1]]
            outputs, cpu_per_item = predict_measured(adapter, batch)
            return "ok", ([o.SerializeToString() for o in outputs], cpu_per_item * len(batch))
        if request[0] == "health":
            adapter.health()
            return "ok", None
        raise ModelError(f"unknown request {request[0]!r}")
    except Exception as exc:  # typed, so it reads in the parent as it would in-process
        return "error", typed_model_error(exc)


if __name__ == "__main__":
    _fd, _parent = int(sys.argv[1]), int(sys.argv[2])
    _serve(Connection(_fd), _parent)
