"""Executors: who runs the probe units. Each takes (spec, inputs) jobs and yields finished units.

- ``serial``: in this process, one unit after another (debugging; a GPU run uses it).
- ``local`` (default): a pool of worker processes over the machine's cores. Each worker runs one
  unit at a time single-threaded (one torch, BLAS and XGBoost thread), so the pool's numbers are
  the serial executor's, bit for bit.
- ``ray``: the same units as Ray tasks (one CPU each) on the cluster at ``ray.address``, or on a
  local Ray started here. A dataset's feature matrix is put into Ray's object store once and
  shared by all of that dataset's units.

All three run :func:`saelab.pipeline.units.run_unit_or_skip`, so they give the same results table
for the same config. Jobs are pulled lazily, with a bounded number in flight, so the caller can
prepare the next dataset's inputs while the current ones are being fitted.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Protocol

from saelab.errors import ConfigError
from saelab.pipeline.plan import UnitSpec
from saelab.pipeline.units import UnitInputs, UnitOutcome, run_unit_or_skip

log = logging.getLogger(__name__)

Job = tuple[UnitSpec, UnitInputs]

EXECUTORS: tuple[str, ...] = ("local", "serial", "ray")


def available_cores() -> int:
    """CPU cores this process may use (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class Executor(Protocol):
    """Runs units and yields ``(spec, outcome)`` as they finish (in any order)."""

    name: str
    workers: int

    def map(self, jobs: Iterable[Job]) -> Iterator[tuple[UnitSpec, UnitOutcome]]: ...

    def close(self) -> None: ...


def bounded_map(
    jobs: Iterable[Job],
    limit: int,
    submit: Callable[[UnitSpec, UnitInputs], Any],
    wait_any: Callable[[list[Any]], Iterable[tuple[Any, UnitOutcome]]],
    pending: dict[Any, UnitSpec],
) -> Iterator[tuple[UnitSpec, UnitOutcome]]:
    """Submit jobs with at most ``limit`` in flight (in ``pending``: handle -> spec) and yield
    ``(spec, outcome)`` as ``wait_any`` reports handles done; jobs are pulled lazily."""
    source = iter(jobs)
    exhausted = False
    while True:
        while not exhausted and len(pending) < limit:
            job = next(source, None)
            if job is None:
                exhausted = True
                break
            pending[submit(*job)] = job[0]
        if not pending:
            return
        for handle, outcome in wait_any(list(pending)):
            yield pending.pop(handle), outcome


class SerialExecutor:
    """Run units one after another in this process."""

    name = "serial"
    workers = 1

    def map(self, jobs: Iterable[Job]) -> Iterator[tuple[UnitSpec, UnitOutcome]]:
        for spec, inputs in jobs:
            yield spec, run_unit_or_skip(spec, inputs)

    def close(self) -> None:
        pass


_PARENT_POLL_SECONDS = 1.0


def _exit_with_parent(parent: int) -> None:
    """Leave as soon as the run that started this worker is gone (killed, not just closed).

    A killed parent cannot shut its pool down, and a spawned worker would otherwise go on
    fitting its queued units for nobody; polling ``getppid`` works on every POSIX system.
    """
    while True:
        time.sleep(_PARENT_POLL_SECONDS)
        if os.getppid() != parent:
            os._exit(1)


def _init_worker(parent: int) -> None:
    """Worker start-up: one thread everywhere (units also enforce it); exit with the parent."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    if os.name == "posix":
        threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


class ProcessExecutor:
    """A pool of ``workers`` processes (spawned, so no thread pool is inherited), one unit each.

    At most ``2 * workers`` units are in flight; the next job is pulled only when one finishes.
    Like every multiprocessing pool, a script that runs it must guard its entry point with
    ``if __name__ == "__main__":`` (notebooks and the ``saelab`` command need nothing).
    """

    name = "local"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = max(1, int(workers or available_cores()))
        self._pool: ProcessPoolExecutor | None = None

    def _start(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(os.getpid(),),
            )
        return self._pool

    def map(self, jobs: Iterable[Job]) -> Iterator[tuple[UnitSpec, UnitOutcome]]:
        pool = self._start()
        pending: dict[Future[UnitOutcome], UnitSpec] = {}

        def wait_any(futures: list[Future[UnitOutcome]]) -> Iterator[tuple[Any, UnitOutcome]]:
            done, _ = wait(futures, return_when=FIRST_COMPLETED)
            return ((f, f.result()) for f in done)

        def submit(spec: UnitSpec, inputs: UnitInputs) -> Future[UnitOutcome]:
            return pool.submit(run_unit_or_skip, spec, inputs)

        try:
            yield from bounded_map(jobs, 2 * self.workers, submit, wait_any, pending)
        except BaseException:
            for future in pending:
                future.cancel()
            self.close(kill=True)
            raise

    def close(self, kill: bool = False) -> None:
        if self._pool is None:
            return
        if kill:
            for process in list(getattr(self._pool, "_processes", {}).values()):
                process.terminate()
        self._pool.shutdown(wait=not kill, cancel_futures=True)
        self._pool = None


def _ray_unit(spec: UnitSpec, x: Any, splits: Any, x_test_refs: dict[str, Any]) -> UnitOutcome:
    """A Ray task: fetch the shared OOD arrays, then run the unit as every executor does."""
    import ray

    x_test = {name: ray.get(ref) for name, ref in x_test_refs.items()}
    return run_unit_or_skip(spec, UnitInputs(x=x, splits=splits, x_test=x_test))


class RayExecutor:
    """Units as Ray tasks (``num_cpus=1``), inputs through Ray's object store.

    ``address``: a running cluster (``"auto"``, ``"ray://head:10001"``, ...); ``None`` starts a
    local Ray with ``num_cpus`` CPUs (default: all cores) and stops it on ``close``. Results and
    the cache are written by this (driver) process, so only the driver needs the run folder; a
    cluster's workers receive their arrays from the object store.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "key 'executor': 'ray' needs the Ray package; install it with "
                "pip install 'saelab[ray]'"
            ) from None
        self._ray = ray
        self._started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None:
                kwargs["num_cpus"] = int(num_cpus or available_cores())
            else:
                kwargs["address"] = address
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"key 'ray.address': cannot start or join Ray ({exc})") from exc
            self._started = True
        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._task = ray.remote(num_cpus=1)(_ray_unit)
        self._refs: dict[int, tuple[Any, Any]] = {}

    def _put(self, array: Any) -> Any:
        """The object-store reference of ``array``, put once per array object."""
        entry = self._refs.get(id(array))
        if entry is None or entry[0] is not array:
            entry = (array, self._ray.put(array))
            self._refs[id(array)] = entry
            if len(self._refs) > 64:  # keep the most recent arrays only
                for key in list(self._refs)[:-32]:
                    del self._refs[key]
        return entry[1]

    def map(self, jobs: Iterable[Job]) -> Iterator[tuple[UnitSpec, UnitOutcome]]:
        ray = self._ray
        pending: dict[Any, UnitSpec] = {}

        def submit(spec: UnitSpec, inputs: UnitInputs) -> Any:
            refs = {name: self._put(a) for name, a in inputs.x_test.items()}
            return self._task.remote(spec, self._put(inputs.x), inputs.splits, refs)

        def wait_any(refs: list[Any]) -> Iterator[tuple[Any, UnitOutcome]]:
            done, _ = ray.wait(refs, num_returns=1)
            return ((ref, ray.get(ref)) for ref in done)

        try:
            yield from bounded_map(jobs, 2 * self.workers, submit, wait_any, pending)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise

    def close(self) -> None:
        self._refs.clear()
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
            self._started = False


def make_executor(
    kind: str,
    workers: int | None = None,
    ray_address: str | None = None,
    ray_cpus: int | None = None,
    device: str = "cpu",
) -> Executor:
    """The executor named ``kind`` (one of :data:`EXECUTORS`).

    With probes on a GPU (``device`` not ``cpu``), ``local`` runs the units in this process, one
    after another: the GPU is the parallelism, and worker processes would each hold a CUDA context.
    """
    if kind == "serial":
        return SerialExecutor()
    if kind == "local":
        if device != "cpu":
            log.info("probes on %s: units run in this process (executor 'local')", device)
            return SerialExecutor()
        return ProcessExecutor(workers)
    if kind == "ray":
        return RayExecutor(ray_address, ray_cpus)
    raise ConfigError(f"key 'executor': expected one of {list(EXECUTORS)}, got {kind!r}")
