"""Pipeline stages as Ray actors, one per node where the cluster has the nodes (a STRICT_SPREAD placement group,
else PACK). An actor opens the GGUF itself when its node sees the file, else receives its tensors once through
the object store. A step runs as a Ray compiled graph over the stages where one compiles (the step's inputs
written once for every stage, the hidden rows from actor to actor, the logits back, all over Ray's channels),
else as a chain of plain actor calls. A stage that dies fails the step (StageFailed) and is started again in
its bundle, and the graph is compiled again over the new stage."""
from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayChannelError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from pyggml.backends import BackendSpec, Scheduler
from pyggml.graph.errors import PyggmlError

from .batch import StepArrays
from ..gguf_file import GGUFFile
from ..hparams import HParams
from .stages import (CacheSpec, Pipeline, ShippedTensors, StageFailed, StageWorker, sees_file, ship,
                     stage_tensor_names)

STAGE_CPUS = 1  # what each stage's bundle asks of its node (numba's threads still use the node's cores)
READY_SECONDS = 300.0  # for the placement group and each stage to come up


def backend_names(spec: BackendSpec) -> list[str]:
    """The registry names of a backend spec, so each actor makes its own."""
    backends = spec.backends if isinstance(spec, Scheduler) else spec if isinstance(spec, Sequence) else [spec]
    return [b.name for b in backends]


def connect(address: str) -> None:
    """Join the Ray cluster at address (`auto`, host:port or ray://host:port) unless this process has."""
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, ValueError) as e:
            raise PyggmlError(f"cannot reach the Ray cluster at {address!r}: {e}") from None


def spread_strategy(n_stages: int) -> str:
    """One stage per node where the cluster has enough alive nodes, else packed."""
    alive = sum(1 for node in ray.nodes() if node["Alive"])
    return "STRICT_SPREAD" if alive >= n_stages else "PACK"


def wait(refs, what: str):
    """ray.get with a clear error when it does not come in time."""
    try:
        return ray.get(refs, timeout=READY_SECONDS)
    except GetTimeoutError:
        raise PyggmlError(f"{what} did not start within {READY_SECONDS:.0f} s (does the cluster have "
                          f"{STAGE_CPUS} free CPU per stage?)") from None


class StageActor:
    """A StageWorker in a Ray actor, built from the file where its node sees it, else from shipped tensors. A
    compiled graph runs its steps on a thread of its own while plain calls (open, close) come on the main one:
    a lock keeps them apart."""

    def __init__(self, path: str, size: int, hp: HParams, layers: range, backends: list[str]):
        self.args, self.lock = (hp, layers, backends), threading.Lock()
        self.worker = self._worker(GGUFFile(path)) if sees_file(path, size) else None

    def _worker(self, tensors: GGUFFile | ShippedTensors) -> StageWorker:
        from pyggml.backends.registry import create
        hp, layers, names = self.args
        backends = [create(name) for name in names]
        return StageWorker(hp, layers, backends[0] if len(backends) == 1 else backends, tensors)

    def needs_tensors(self) -> bool:
        return self.worker is None

    def receive(self, tensors: ShippedTensors) -> None:
        self.worker = self._worker(tensors)

    def open(self, key: int, spec: CacheSpec) -> None:
        with self.lock:
            self.worker.open(key, spec)

    def execute(self, key: int, step: StepArrays, hidden: np.ndarray | None = None) -> np.ndarray:
        with self.lock:
            return self.worker.execute(key, step, hidden)

    def close(self, key: int) -> None:
        with self.lock:
            self.worker.close(key)


def compile_steps(workers: list) -> ray.dag.CompiledDAG:
    """The stages' execute calls as one compiled graph: input (key, step) read by every stage, each stage's rows
    to the next, the last stage's logits out."""
    from ray.dag import InputNode
    with InputNode() as inp:
        node = None
        for worker in workers:
            node = worker.execute.bind(inp[0], inp[1], node)
    return node.experimental_compile()


class RayPipeline(Pipeline):
    """Stages as Ray actors in one placement group, a bundle each."""
    where = "on Ray"

    def __init__(self, address: str, gguf: GGUFFile, hp: HParams, ranges: list[range], backend: BackendSpec,
                 force_ship: bool = False, compiled: bool = True):
        connect(address)
        self.gguf, self.hp, self.ranges, self.backends = gguf, hp, ranges, backend_names(backend)
        self.force_ship = force_ship  # send the tensors even where a node sees the file (for tests)
        self.strategy = spread_strategy(len(ranges))
        self.group = placement_group([{"CPU": STAGE_CPUS}] * len(ranges), strategy=self.strategy)
        wait(self.group.ready(), f"the placement group of {len(ranges)} stages ({self.strategy})")
        super().__init__(ranges)
        self.workers = [self._start(i) for i in range(len(ranges))]
        self.compiled, self.graph = compiled, None
        self.calls = self._compile()  # how steps run: "compiled graph" or "plain actor calls (why)"

    def _compile(self) -> str:
        """Compile the steps' graph over the current stages where asked and where Ray can; how steps will run."""
        if not self.compiled:
            return "plain actor calls"
        try:
            self.graph = compile_steps(self.workers)
        except Exception as e:  # compiled graphs are experimental (and absent over Ray Client): plain calls do it all
            self.graph = None
            return f"plain actor calls (the compiled graph failed: {type(e).__name__}: {e})"
        return "compiled graph"

    def _teardown(self) -> None:
        """Let the compiled graph go (it shut itself down already if a stage died)."""
        graph, self.graph = self.graph, None
        if graph is not None:
            try:
                graph.teardown()
            except Exception:  # noqa: BLE001  a graph a dead actor broke may fail to tear down; it holds nothing
                pass

    def _start(self, i: int):
        """Stage i's actor in bundle i, holding its weights and the K/V of every open context."""
        placement = PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=i)
        path, size = str(self.gguf.path.resolve()), self.gguf.path.stat().st_size
        actor = ray.remote(StageActor).options(num_cpus=STAGE_CPUS, scheduling_strategy=placement).remote(
            "" if self.force_ship else path, size, self.hp, self.ranges[i], self.backends)
        if wait(actor.needs_tensors.remote(), f"pipeline stage {i}"):
            names = stage_tensor_names(list(self.gguf.tensors), self.ranges[i], self.hp.n_layer)
            wait(actor.receive.remote(ray.put(ship(self.gguf, names))), f"pipeline stage {i}'s tensors")
        wait([actor.open.remote(key, spec) for key, spec in self.specs.items()], f"pipeline stage {i}'s K/V")
        return actor

    def _open(self, key: int, spec: CacheSpec) -> None:
        wait([w.open.remote(key, spec) for w in self.workers], "the stages' K/V")

    def _close(self, key: int) -> None:
        if ray.is_initialized():  # a context collected after the driver left the cluster has nothing to free
            for w in self.workers:
                w.close.remote(key)

    def run(self, key: int, step: StepArrays) -> np.ndarray:
        try:
            if self.graph is not None:  # a copy: the array read from the channel blocks the next step while alive
                return np.array(ray.get(self.graph.execute(key, step), timeout=-1))
            hidden = None
            for worker in self.workers:  # the step's inputs by value: small, they ride in each call
                hidden = worker.execute.remote(key, step, hidden)
            return ray.get(hidden)
        except (RayActorError, RayChannelError) as e:  # a dead stage; a compiled graph then shut itself down
            self._teardown()
            dead = self._restart_dead()
            self.calls = self._compile()
            raise StageFailed(f"pipeline stage {', '.join(self.name(i) for i in dead) or '?'} died "
                              f"({type(e).__name__}); the step's requests failed and the stage was started "
                              "again") from None

    def _restart_dead(self) -> list[int]:
        """Start again every stage whose actor is gone; their indices."""
        dead = []
        for i, worker in enumerate(self.workers):
            try:
                ray.get(worker.needs_tensors.remote(), timeout=READY_SECONDS)
            except RayActorError:
                dead.append(i)
        for i in dead:
            self.workers[i] = self._start(i)
        self.epoch += 1
        return dead

    def shutdown(self) -> None:
        self._teardown()
        for worker in self.workers:
            ray.kill(worker)
        self.workers = []
        remove_placement_group(self.group)
