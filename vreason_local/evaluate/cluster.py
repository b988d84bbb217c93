"""Answering a dataset on a Ray cluster: one loaded engine per worker (a Ray actor), a video at a time.

The unit of work is one video group (runner.group_by_video): a worker encodes the video once and answers
all its questions in every mode, exactly as a single-machine run does, by running `runner.evaluate_group`
unchanged. The actor method is a generator, so each row reaches the driver the moment it is answered
(a long group does not hold its rows back), and the driver alone writes results.jsonl, in the same row
format, so `--resume` works across Ray and single-machine runs alike.

Faults: a worker that dies (killed, out of memory, its node lost) loses only its unfinished answers. The
rows already received for its video are passed as `skip` when the video is given to another worker (or to
the same one once Ray has restarted it), so nothing is lost and nothing is answered twice. A video that
kills a worker `MAX_ATTEMPTS` times (say, out of memory every time) gets error rows saying so instead of
taking the whole cluster down with it.

Ray is an optional dependency: it is imported only here, and only when a run asks for it.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import Remedy, UserError
from ..wording import count
from .runner import EvalSettings, Stop, error_row, evaluate_group, group_by_video, write_rows

if TYPE_CHECKING:
    from ..engine import EngineSettings
    from ..events import Mode
    from .items import Item
    from .results import ResultsWriter

INSTALL = Remedy('install it with pip install "vreason-local[ray]"')
START_TIMEOUT_S = 600.0  # a worker loads its model in this time, or it is taken for unable to start
MAX_ATTEMPTS = 3  # a video is given to workers at most this many times before its rest become error rows
MAX_RESTARTS = 3  # Ray restarts a crashed worker (reloading its model) this often
POLL_S = 0.2  # how often the driver looks at Ctrl-C while it waits for rows
# Ray (2.5x on) logs a notice about token authentication at every ray.init; it is Ray's cluster set-up, not this
# run's, and would stand above every run's output. Ray's own documentation says how to set it (RAY_AUTH_MODE).
_AUTH_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"
_ADDRESS = re.compile(r"^(?P<host>[\w.\-]+|\[[0-9a-fA-F:]+\]):(?P<port>\d+)$")


def import_ray() -> Any:
    """The `ray` module, or a UserError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError("running on a Ray cluster needs the ray package, which is not installed", [INSTALL]) from None
    return ray


def connect(address: str) -> bool:
    """Join or start a cluster: "auto" the one this machine belongs to, "local" a new one on this machine,
    anything else the cluster at that address. Returns whether this call connected (and so must
    disconnect); a program already connected (a notebook, a test) keeps its own connection."""
    ray = import_ray()
    if address not in ("auto", "local"):
        _require_listening(address)
    if ray.is_initialized():
        return False
    logging.getLogger(_AUTH_NOTICE_LOGGER).setLevel(logging.ERROR)
    if address == "local":
        ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="warning")
        return True
    try:
        ray.init(address=address, log_to_driver=False, logging_level="warning")
    except ConnectionError:
        raise UserError(
            "no Ray cluster runs on this machine (`ray start --head` starts one)",
            [Remedy("start one for this run alone", setting="cluster.ray", value="local")],
        ) from None
    return True


def _require_listening(address: str) -> None:
    """Ray retries an address where nothing listens for minutes; a plain TCP connect says so at once."""
    match = _ADDRESS.match(address)
    if match is None:
        raise UserError(f"'{address}' is not a Ray cluster address: give auto, local or HOST:PORT (the head's GCS)")
    host, port = match["host"].strip("[]"), int(match["port"])
    if not 1 <= port <= 65535:
        raise UserError(f"'{address}' is not a Ray cluster address: port {port} is not between 1 and 65535")
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        raise UserError(f"no Ray cluster answers at {address} ({exc.strerror or exc})") from None


# -- what one worker needs, and where it fits ------------------------------------------------------------
@dataclass(frozen=True)
class Demand:
    """What Ray is asked for per worker: a GPU where the cluster has them (and the engine offloads),
    else as many CPUs as llama.cpp will use threads."""

    cpus: float
    gpus: float

    @staticmethod
    def for_engine(settings: EngineSettings, cluster_gpus: float) -> Demand:
        if cluster_gpus >= 1 and settings.n_gpu_layers != 0:
            return Demand(cpus=1, gpus=1)
        return Demand(cpus=settings.n_threads, gpus=0)

    def fits(self, resources: dict[str, float]) -> int:
        """How many workers one node with `resources` holds."""
        by_cpu = int(resources.get("CPU", 0) // self.cpus)
        return min(by_cpu, int(resources.get("GPU", 0) // self.gpus)) if self.gpus else by_cpu

    def __str__(self) -> str:
        cpus = f"{self.cpus:g} CPU{'s' if self.cpus != 1 else ''}"
        return f"1 GPU and {cpus}" if self.gpus else f"{cpus} (one per thread)"


def split_threads(nodes: Sequence[dict], workers: int, most: int) -> int:
    """Threads per worker when the user set none: the most (up to `most`, the single-machine default) with
    which the nodes' CPUs hold `workers` workers, each node's CPUs shared between the workers it runs; at
    least 1 (then a cluster with fewer CPUs than workers is refused as too small)."""
    for threads in range(max(1, most), 1, -1):
        if sum(int(n["Resources"].get("CPU", 0) // threads) for n in nodes) >= workers:
            return threads
    return 1


def node_name(node: dict) -> str:
    """A node as an operator knows it: its host name and address."""
    return f"{node.get('NodeManagerHostname', '?')} ({node.get('NodeManagerAddress', '?')})"


def _file_sizes(paths: Sequence[str]) -> list[int | None]:
    """Run on one node: each file's size there (None: not there)."""
    return [os.path.getsize(p) if os.path.isfile(p) else None for p in paths]


def check_files(nodes: Sequence[dict], paths: Sequence[Path]) -> None:
    """Every node that can run a worker must hold each file (the model, its projector, the videos) with the
    size it has here: a worker reads them from its own disk. Checked before any work, one pinned task per
    node, so a node without them is named now rather than failing mid-run (or writing error rows)."""
    ray = import_ray()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    names = [str(p) for p in paths]
    here = _file_sizes(names)
    sizes = ray.remote(num_cpus=0)(_file_sizes)
    calls = [
        sizes.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(names)
        for n in nodes
    ]
    for node, there in zip(nodes, ray.get(calls, timeout=START_TIMEOUT_S)):
        wrong = [
            (path, a, b) for path, a, b in zip(names, here, there) if b is None or b != a
        ]  # missing there: missing, whatever here
        if not wrong:
            continue
        path, size_here, size_there = wrong[0]
        what = f"lacks {path}" if size_there is None else f"has {path} at {size_there:,} bytes, not {size_here or 0:,}"
        more = f" (and {len(wrong) - 1} more files)" if len(wrong) > 1 else ""
        raise UserError(
            f"Ray node {node_name(node)} {what}{more}: each node reads the model and the videos from its own disk",
            [Remedy("copy the files to the same paths on that node, or put them on a shared file system")],
        )


# -- the worker ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WorkerInfo:
    """A started worker: where it runs, and why its engine did not load (None: it did)."""

    node: str
    pid: int
    failure: tuple[str, tuple[Remedy, ...], bool] | None  # message, remedies, whether it is a UserError


class Worker:
    """The Ray actor: one loaded engine, answering one video group at a time.

    A failed load is kept rather than raised: Ray reports an exception in an actor's constructor only as
    "the actor died", and a UserError's structured remedies would not survive that; `ready` hands it over."""

    def __init__(self, model_path: Path, mmproj_path: Path | None, settings: EngineSettings) -> None:
        from ..engine import Engine

        self.engine: Engine | None = None
        self.failure: tuple[str, tuple[Remedy, ...], bool] | None = None
        try:
            self.engine = Engine(model_path, mmproj_path, settings)
        except UserError as exc:
            self.failure = (exc.message, exc.remedies, True)
        except Exception as exc:  # reported by the driver, naming the node
            self.failure = (f"{type(exc).__name__}: {exc}", (), False)

    def ready(self) -> WorkerInfo:
        return WorkerInfo(f"{socket.gethostname()} ({_ip()})", os.getpid(), self.failure)

    def evaluate(
        self, items: Sequence[Item], modes: Sequence[Mode], settings: EvalSettings, skip: Collection[tuple[str, str]]
    ) -> Iterator[dict]:
        """`runner.evaluate_group` on this worker's engine: each row is sent as soon as it is answered."""
        if self.engine is None:  # a restart whose load failed; the driver drops this worker
            raise RuntimeError(self.failure[0] if self.failure else "the engine is not loaded")
        yield from evaluate_group(self.engine, items, modes, settings, skip=frozenset(skip))


def _ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


# -- the driver ------------------------------------------------------------------------------------------
@dataclass
class _Group:
    """One video's items, and the (id, mode) rows the run already has for them (done before, or received)."""

    items: list[Item]
    skip: set[tuple[str, str]]
    attempts: int = 0

    def left(self, modes: Sequence[str]) -> list[tuple[Item, str]]:
        return [(item, mode) for item in self.items for mode in modes if (item.id, mode) not in self.skip]


@dataclass
class _Call:
    """What the driver waits on: a group being answered (`group`), or a restarted worker's `ready` probe."""

    actor: Any
    group: _Group | None
    since: float = field(default_factory=time.monotonic)


class WorkerPool:
    """Workers on a Ray cluster, each holding one loaded engine; used like an Engine by `vreason eval`:
    opened before run.json is written (so a run that cannot start leaves --out as it was), closed after.

    `address`: "auto", "local" or HOST:PORT (see `connect`). `workers`: how many (None: as many as the
    cluster holds). `settings`: the engine settings each worker loads its model with (plain, picklable)."""

    def __init__(
        self,
        address: str,
        workers: int | None,
        model_path: Path,
        mmproj_path: Path | None,
        settings: EngineSettings,
        files: Sequence[Path] = (),
        start_timeout_s: float = START_TIMEOUT_S,
        split_cpus: bool = False,
    ) -> None:
        """`files`: what else each node must hold (the videos). `split_cpus`: the threads were not chosen by the
        user, so a given number of workers shares each node's CPUs (`split_threads`) instead of asking each for
        `settings.n_threads` CPUs."""
        self.split_cpus = split_cpus
        self._ray = import_ray()
        self._owns = connect(address)
        self.actors: list[Any] = []
        self.infos: list[WorkerInfo] = []
        self.start_timeout_s = start_timeout_s
        try:
            self._start(workers, model_path, mmproj_path, settings, files)
        except BaseException:
            self.close()
            raise

    def _start(
        self,
        workers: int | None,
        model_path: Path,
        mmproj_path: Path | None,
        settings: EngineSettings,
        files: Sequence[Path],
    ) -> None:
        ray = self._ray
        nodes = [n for n in ray.nodes() if n["Alive"]]
        gpus = sum(n["Resources"].get("GPU", 0) for n in nodes)
        if self.split_cpus and workers is not None and not Demand.for_engine(settings, gpus).gpus:
            settings = replace(settings, n_threads=split_threads(nodes, workers, settings.n_threads))
        demand = Demand.for_engine(settings, gpus)
        hosts = [n for n in nodes if demand.fits(n["Resources"])]
        capacity = sum(demand.fits(n["Resources"]) for n in hosts)
        if capacity == 0:
            most = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
            raise UserError(
                f"no Ray node has {demand} for one worker (the largest has {most:g} CPUs)",
                [Remedy("fewer threads per worker", setting="engine.n_threads", value=int(most))] if most >= 1 else [],
            )
        if workers is not None and workers > capacity:
            threads = split_threads(nodes, workers, int(demand.cpus))
            fits = sum(int(n["Resources"].get("CPU", 0) // threads) for n in nodes) >= workers
            fewer_threads = (
                [Remedy("fewer threads per worker", setting="engine.n_threads", value=threads)]
                if not demand.gpus and fits and threads < demand.cpus
                else []
            )
            raise UserError(
                f"the Ray cluster holds {count(capacity, 'worker')} of {demand} each, not {workers}",
                [Remedy(f"at most {count(capacity, 'worker')}", setting="cluster.workers", value=capacity)]
                + fewer_threads,
            )
        check_files(hosts, [model_path, *([mmproj_path] if mmproj_path else []), *dict.fromkeys(files)])
        actor_class = ray.remote(Worker).options(
            num_cpus=demand.cpus, num_gpus=demand.gpus, max_restarts=MAX_RESTARTS, max_task_retries=0
        )
        self.actors = [actor_class.remote(model_path, mmproj_path, settings) for _ in range(workers or capacity)]
        probes = [a.ready.remote() for a in self.actors]
        ready, _ = ray.wait(probes, num_returns=len(probes), timeout=self.start_timeout_s)
        if len(ready) < len(probes):
            raise UserError(
                f"{len(probes) - len(ready)} of {count(len(probes), 'Ray worker')} did not start within "
                f"{self.start_timeout_s:.0f} s (the cluster's CPUs or GPUs are taken by other work)",
                [Remedy("fewer workers", setting="cluster.workers", value=len(ready) or 1)],
            )
        self.infos = ray.get(probes)
        for info in self.infos:
            _raise_failure(info)

    def close(self) -> None:
        """Stop the workers (an answer running now is dropped: it was never a row) and leave the cluster."""
        for actor in self.actors:
            self._ray.kill(actor)
        self.actors = []
        if self._owns:
            self._ray.shutdown()
            self._owns = False

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run_eval(
        self,
        items: Sequence[Item],
        modes: Sequence[Mode],
        settings: EvalSettings,
        writer: ResultsWriter,
        done: Collection[tuple[str, str]] = frozenset(),
        stop: Stop | None = None,
        on_row: Callable[[dict], None] | None = None,
    ) -> int:
        """`runner.run_eval` on the cluster: every (item, mode) not in `done` answered, each row appended by
        this process as it arrives; returns how many rows were written. Stops early once `stop` is cancelled."""
        return write_rows(self.rows(items, modes, settings, done, stop), writer, on_row)

    def rows(
        self,
        items: Sequence[Item],
        modes: Sequence[Mode],
        settings: EvalSettings,
        done: Collection[tuple[str, str]] = frozenset(),
        stop: Stop | None = None,
    ) -> Iterator[dict]:
        """Each row as a worker finishes it, exactly one per (item, mode) not in `done`, whichever workers die."""
        ray = self._ray
        from ray.exceptions import ActorDiedError

        stop = stop or Stop()
        groups = [_Group(g, {(i.id, m) for i in g for m in modes if (i.id, m) in done}) for g in group_by_video(items)]
        todo = deque(g for g in groups if g.left(modes))
        idle = list(self.actors)
        pending: dict[Any, _Call] = {}
        while todo or any(call.group for call in pending.values()):
            if stop.cancel_requested:
                return
            while idle and todo:
                group = todo.popleft()
                group.attempts += 1
                actor = idle.pop(0)
                pending[actor.evaluate.remote(group.items, modes, settings, group.skip)] = _Call(actor, group)
            if not pending:
                raise UserError(
                    f"every Ray worker died; answers left: {sum(len(g.left(modes)) for g in todo)} "
                    "(the answers received are saved)",
                    [Remedy("resume the run when the cluster has room again")],
                )
            self._drop_stuck_restarts(pending)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            for ref in ready:
                call = pending.pop(ref)
                try:
                    if call.group is None:
                        if ray.get(ref).failure is None:
                            idle.append(call.actor)
                        else:  # restarted, but its model no longer loads there: given up
                            ray.kill(call.actor)
                        continue
                    row = ray.get(next(ref))
                except StopIteration:  # the group is answered
                    idle.append(call.actor)
                    continue
                except _lost_work() as err:
                    if not isinstance(err, ActorDiedError):  # Ray is restarting it: use it once it has loaded
                        pending[call.actor.ready.remote()] = _Call(call.actor, None)
                    if call.group is not None:
                        yield from self._retry(call.group, modes, settings, todo, err)
                    continue
                call.group.skip.add((row["id"], row["mode"]))
                pending[ref] = call  # the same generator: its next row
                yield row

    def _retry(
        self, group: _Group, modes: Sequence[Mode], settings: EvalSettings, todo: deque[_Group], err: Exception
    ) -> Iterator[dict]:
        """A group whose worker died goes to the front of the queue, minus the rows received; after
        MAX_ATTEMPTS its remaining answers become error rows (so one bad video cannot stop the run)."""
        if group.attempts < MAX_ATTEMPTS:
            todo.appendleft(group)
            return
        why = RuntimeError(
            f"the Ray worker answering this video died {group.attempts} times (last: {type(err).__name__})"
        )
        for item, mode in group.left(modes):
            group.skip.add((item.id, mode))
            yield error_row(item, mode, settings, why)

    def _drop_stuck_restarts(self, pending: dict[Any, _Call]) -> None:
        """A restarted worker that cannot load within the start timeout (its node gone, no room elsewhere)
        is given up, so that the run ends instead of waiting forever."""
        now = time.monotonic()
        for ref, call in list(pending.items()):
            if call.group is None and now - call.since > self.start_timeout_s:
                del pending[ref]
                self._ray.kill(call.actor)


def _lost_work() -> tuple[type[Exception], ...]:
    """Ray's errors for work lost with its worker, its node or its memory (an exception raised by the work
    itself, a RayTaskError, is not among them: it is a bug to report, not a reason to try again)."""
    from ray import exceptions as e

    return (e.RayActorError, e.ObjectLostError, e.OutOfMemoryError, e.NodeDiedError, e.WorkerCrashedError)


def _raise_failure(info: WorkerInfo) -> None:
    """A worker's failed load, as the error it was, naming the node."""
    if info.failure is None:
        return
    message, remedies, user = info.failure
    if user:
        raise UserError(f"Ray worker on {info.node}: {message}", remedies)
    raise RuntimeError(f"Ray worker on {info.node} could not load the model: {message}")
