"""torch.distributed helpers (released names). NCCL on CUDA, gloo on CPU."""
from __future__ import annotations

import datetime
import math
import os
import pickle
import secrets
import socket
import time
from typing import Callable, List, Optional, Tuple, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


TIMEOUT_ENV = "INTERMAE_DIST_TIMEOUT"  # seconds a collective (and setting up the group) may wait; torch's default
GROUP_STORE_KEY = "intermae/group_store"  # in torchrun's agent store: "host:port:token" of the current group's store
_TOKEN_KEY = "intermae/token"  # in the group's own store


def init_dist(launcher: str, backend: str | None = None) -> None:
    """Initialise the default process group from torchrun's environment (``--launcher pytorch``).

    ``$INTERMAE_DIST_TIMEOUT`` (seconds) bounds how long the processes wait for each other, also
    while the group is set up (torch's default otherwise: 30 min): under ``torchrun --max-restarts``
    a group that cannot form then fails, and torchrun restarts it, instead of waiting.

    Under torchrun's shared agent store (``TORCHELASTIC_USE_AGENT_STORE=True``, the default of the
    c10d and static rendezvous) every attempt forms its group in a store of its own, hosted by rank
    0 (:func:`group_store`), so a restarted group never reads the addresses of the group it replaces."""
    if launcher != "pytorch":
        raise ValueError(f"unsupported launcher '{launcher}'; use 'pytorch' (torchrun) or 'none'")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise RuntimeError(f"--launcher pytorch needs the environment variable {key}; start with torchrun")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    timeout = os.environ.get(TIMEOUT_ENV, "").strip()
    kwargs = {"timeout": datetime.timedelta(seconds=float(timeout))} if timeout else {}
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True):
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        store = group_store(rank, world_size, kwargs.get("timeout", dist.constants.default_pg_timeout))
        kwargs.update(store=store, rank=rank, world_size=world_size)
    dist.init_process_group(backend=backend, **kwargs)


def _local_host(addr: str) -> bool:
    """Whether ``addr`` names an address of this machine (a socket can be bound to it)."""
    try:
        with socket.create_server((addr, 0)):
            return True
    except OSError:
        return False


def group_store(rank: int, world_size: int, timeout: datetime.timedelta) -> dist.Store:
    """A new TCPStore for this attempt's process group: rank 0 serves it on a free port, the other
    ranks find it through torchrun's agent store (at ``$MASTER_ADDR:$MASTER_PORT``).

    torchrun's agent store outlives the workers. Forming a group, gloo (and NCCL) publish each
    rank's address in the store under fixed keys, and torchrun restarts the workers with the same
    store, so a restarted rank could read the address of the dead rank it replaces and fail with
    "connectFullMesh failed ... Connection refused". (A key prefix per ``TORCHELASTIC_RESTART_COUNT``
    would not do: each node's agent counts its own restarts, so the ranks of one group may disagree.)
    Here rank 0 publishes ``host:port:token`` under one key of the agent store; a rank that reads the
    previous attempt's entry finds nothing listening there (that attempt's processes are gone), or a
    store without that token, and reads the key again, until ``timeout``."""
    master_addr, master_port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    agent = dist.TCPStore(master_addr, master_port, is_master=False, timeout=timeout)
    if rank == 0:
        host = master_addr if _local_host(master_addr) else socket.getfqdn()
        own = dist.TCPStore(host, 0, world_size, is_master=True, timeout=timeout, wait_for_workers=False)
        token = secrets.token_hex(8)
        own.set(_TOKEN_KEY, token)
        agent.set(GROUP_STORE_KEY, f"{host}:{own.port}:{token}")
        return own
    deadline = time.monotonic() + timeout.total_seconds()

    def left(cap: float = math.inf) -> datetime.timedelta:
        return datetime.timedelta(seconds=min(cap, max(deadline - time.monotonic(), 0.001)))

    while True:
        agent.wait([GROUP_STORE_KEY], left())
        host, port, token = agent.get(GROUP_STORE_KEY).decode().rsplit(":", 2)
        if _listening(host, int(port), left(10.0).total_seconds()):
            try:
                own = dist.TCPStore(host, int(port), world_size, is_master=False, wait_for_workers=False,
                                    timeout=left(10.0))
                if own.get(_TOKEN_KEY).decode() == token:
                    own.set_timeout(timeout)
                    return own
            except dist.DistError:  # a port of this attempt's gloo or of another program, not the store
                pass
        if time.monotonic() >= deadline:
            raise dist.DistStoreError(f"rank {rank}: rank 0 published no process group store within "
                                      f"{timeout.total_seconds():g} s (the last address read, {host}:{port}, is not it)")
        time.sleep(0.2)


def _listening(host: str, port: int, timeout_s: float) -> bool:
    """Whether something accepts connections at ``host:port`` (a dead attempt's store refuses at once)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_dist_info() -> Tuple[int, int]:
    """(rank, world_size); (0, 1) without a process group."""
    if is_dist():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place (a no-op without a process group); returns it."""
    if is_dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_gather_objects(obj) -> List:
    """``obj`` of every process, as a list indexed by rank (``[obj]`` without a process group).

    Collective: every process must call it. ``obj`` is pickled (tensors travel as they are)."""
    if not is_dist():
        return [obj]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def _shareable(error: BaseException) -> BaseException:
    """``error`` itself when it pickles (to be sent to the other processes), else a RuntimeError
    with its type and message."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # noqa: BLE001 - any pickling failure
        return RuntimeError(f"{type(error).__name__}: {error}")


def run_on_rank0(fn: Callable[[], T]) -> Optional[T]:
    """``fn()`` on rank 0 only, with its outcome shared: when it raises, every process raises the
    same error (type and message) instead of waiting in a later collective for a rank 0 that
    stopped. Returns ``fn()``'s value on rank 0 and None elsewhere.

    Collective under torch.distributed (one ``broadcast_object_list``); without a process group it
    is ``fn()``.
    """
    if not is_dist():
        return fn()
    result, failure = None, None
    if dist.get_rank() == 0:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, on every process
            failure = e
    box = [_shareable(failure) if failure is not None else None]
    dist.broadcast_object_list(box, src=0)
    if failure is not None:
        raise failure
    if box[0] is not None:
        raise box[0]
    return result


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model
