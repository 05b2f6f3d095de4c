"""Training batches built ahead, off the training thread.

A small daemon thread draws the next micro-batches with the ``WindowSampler`` (a pure function of
seed, step and micro-batch index, so prefetching changes no data) and, when training on CUDA, puts them
in pinned memory; the training thread then only starts ``non_blocking`` copies, so the GPU never waits
for numpy, and the host never waits for the GPU to take a batch.
"""
from __future__ import annotations

import queue
import threading

import numpy as np
import torch

_POLL_S = 0.1


class Prefetcher:
    """Yields (x, y) on ``device`` for steps ``start..stop-1``, ``micros`` micro-batches each, in order.

    Micro-batch ``m`` of this process is the sampler's global micro-batch ``m * world + rank``, as a
    1-process run with ``world`` times the accumulation would draw it.
    """

    def __init__(self, sampler, batch_size: int, start: int, stop: int, micros: int, rank: int, world: int,
                 device: torch.device, depth: int = 2):
        self.sampler, self.batch_size = sampler, batch_size
        self.rank, self.world, self.micros = rank, world, micros
        self.device = device
        self.pin = device.type == "cuda"
        self.order = ((s, m) for s in range(start, stop) for m in range(micros))
        self.q: queue.Queue = queue.Queue(maxsize=max(1, depth * micros))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._fill, name="midigen-prefetch", daemon=True)
        self.thread.start()

    def _fill(self) -> None:
        try:
            for step, micro in self.order:
                xb, yb = self.sampler.batch(step, micro * self.world + self.rank, self.batch_size)
                item = (step, micro, self._host(xb), self._host(yb))
                if not self._put(item):
                    return
        except BaseException as e:  # handed to the training thread, raised there
            self._put(("error", e))

    def _host(self, a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a)
        return t.pin_memory() if self.pin else t

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def get(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch for (step, micro), on the device; they must be asked for in order."""
        while True:
            try:
                item = self.q.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self.thread.is_alive():
                    raise RuntimeError("the batch prefetch thread stopped without an error") from None
        if item[0] == "error":
            raise item[1]
        s, m, x, y = item
        if (s, m) != (step, micro):
            raise RuntimeError(f"prefetch order broken: asked for step {step} micro {micro}, got {s}/{m}")
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
