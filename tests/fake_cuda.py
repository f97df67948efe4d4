"""A fake CUDA device with a device clock, and an NCCL-like process group on it.

The host enqueues work and never waits: each stream keeps the device time at which
everything queued on it so far is done. An event recorded on a stream completes at
that stream's time then; it reads as done once the test advances the device clock
past it. NCCL's semantics: a collective runs on its own stream after the issuing
stream reaches the call; its work and future are complete *at enqueue* on the host;
``wait()`` only makes the current stream wait for the collective on the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class Stream:
    name: str
    tail_ms: float = 0.0  # device time when all work queued on it is done


class Device:
    def __init__(self) -> None:
        self.compute = Stream("compute")
        self.nccl = Stream("nccl")
        self.current = self.compute
        self.now_ms = 0.0  # how far the device has got

    def run(self, ms: float, stream: Stream | None = None) -> None:
        """Queue a kernel of ``ms`` on ``stream`` (the current one by default)."""
        (stream or self.current).tail_ms += ms

    def wait_stream(self, waiter: Stream, until_ms: float) -> None:
        waiter.tail_ms = max(waiter.tail_ms, until_ms)

    def finish(self) -> None:
        """Let the device run everything queued so far."""
        self.now_ms = max(s.tail_ms for s in (self.compute, self.nccl))

    def event(self) -> Event:
        return Event(self)

    def current_stream(self) -> Stream:
        return self.current

    def default_stream(self) -> Stream:
        return self.compute


class Event:
    made = 0

    def __init__(self, device: Device) -> None:
        Event.made += 1
        self.device = device
        self.at_ms: float | None = None

    def record(self, stream: Stream | None = None) -> None:
        self.at_ms = (stream or self.device.current).tail_ms

    def query(self) -> bool:
        return self.at_ms is not None and self.device.now_ms >= self.at_ms

    def elapsed_time(self, end: Event) -> float:
        assert self.at_ms is not None and end.at_ms is not None and end.query()
        return end.at_ms - self.at_ms


class Tensor:
    """Metadata of a CUDA tensor."""

    is_cuda = True

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes

    def numel(self) -> int:
        return self.nbytes // 4

    def element_size(self) -> int:
        return 4


@dataclass
class Future:
    value_: Any = None

    def done(self) -> bool:
        return True  # complete at enqueue, as ProcessGroupNCCL's

    def value(self) -> Any:
        return self.value_


@dataclass(eq=False)
class Work:
    device: Device
    done_ms: float

    def wait(self) -> bool:
        self.device.wait_stream(self.device.current, self.done_ms)
        return True

    def is_completed(self) -> bool:
        return True

    def get_future(self) -> Future:
        return Future()


@dataclass
class NcclGroup:
    """An NCCL-like process group: a collective of ``b`` bytes takes ``b / bytes_per_ms``
    of device time on the NCCL stream, after the issuing stream reaches it."""

    device: Device
    size: int
    bytes_per_ms: float
    issued: list[str] = field(default_factory=list)

    def collective(self, name: str, nbytes: int) -> Work:
        dev = self.device
        self.issued.append(name)
        dev.wait_stream(dev.nccl, dev.current.tail_ms)
        dev.run(nbytes / self.bytes_per_ms, dev.nccl)
        return Work(dev, dev.nccl.tail_ms)

    def module(self) -> Any:
        """A ``torch.distributed``-shaped namespace over this group."""
        pg = self

        class GroupWork(Work):
            pass

        class Dist:
            Work = GroupWork

            @staticmethod
            def get_world_size(group: Any = None) -> int:
                return pg.size

            @staticmethod
            def all_reduce(tensor: Tensor, op: Any = None, group: Any = None,
                           async_op: bool = False) -> Work | None:
                return _issue("all_reduce", tensor.nbytes, async_op)

            @staticmethod
            def reduce_scatter_tensor(output: Tensor, input: Tensor, op: Any = None,
                                      group: Any = None, async_op: bool = False) -> Work | None:
                return _issue("reduce_scatter_tensor", input.nbytes, async_op)

            @staticmethod
            def all_gather_into_tensor(output_tensor: Tensor, input_tensor: Tensor,
                                       group: Any = None, async_op: bool = False) -> Work | None:
                return _issue("all_gather_into_tensor", output_tensor.nbytes, async_op)

            @staticmethod
            def all_to_all_single(output: Tensor, input: Tensor, output_split_sizes: Any = None,
                                  input_split_sizes: Any = None, group: Any = None,
                                  async_op: bool = False) -> Work | None:
                return _issue("all_to_all_single", input.nbytes, async_op)

        def _issue(name: str, nbytes: int, async_op: bool) -> Work | None:
            issued = pg.collective(name, nbytes)
            work = GroupWork(issued.device, issued.done_ms)
            if async_op:
                return work
            work.wait()
            return None

        return Dist
