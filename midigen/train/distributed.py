"""Who this process is under torchrun, and how the processes stay in step and fail together.

The failure rule: work only rank 0 does (checkpoints, logs, the plot) runs through ``on_master``, which
ends with every rank agreeing, in one small all-reduce, on whether it worked. A rank-0 failure then
stops every rank at that same point with an error naming it, instead of leaving the others blocked in
their next collective until the NCCL timeout (NCCL, unlike gloo, does not notice a dead peer). A
failing process also skips the collective teardown (``close(ok=False)``) so it exits at once and
torchrun takes the rest of the group down.
"""
from __future__ import annotations

import os

import torch

from midigen.errors import MidigenError


class Dist:
    """Rank/world from torchrun's environment variables, or a single process."""

    def __init__(self):
        self.enabled = "RANK" in os.environ and "WORLD_SIZE" in os.environ
        self.rank = int(os.environ.get("RANK", 0))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.world = int(os.environ.get("WORLD_SIZE", 1))
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", self.world))
        self.master = self.rank == 0
        self.device = torch.device("cpu")

    @property
    def multi(self) -> bool:
        return self.enabled and self.world > 1

    def init(self, device: torch.device) -> None:
        self.device = device
        if not self.enabled:
            return
        import torch.distributed as dist

        backend = "nccl" if device.type == "cuda" else "gloo"
        kw = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, **kw)

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        if self.multi:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            t /= self.world
        return t

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.multi:
            import torch.distributed as dist

            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def agree(self, error: BaseException | None, what: str) -> None:
        """Every rank learns which ranks failed ``what``; the failed ones re-raise, the rest stop too."""
        if not self.multi:
            if error is not None:
                raise error
            return
        failed = torch.zeros(self.world, dtype=torch.int32, device=self.device)
        failed[self.rank] = int(error is not None)
        self.all_reduce_sum(failed)
        if error is not None:
            raise error
        bad = failed.nonzero().flatten().tolist()
        if bad:
            who = ", ".join(str(r) for r in bad)
            raise MidigenError(f"stopping: rank {who} failed {what} (its error is printed above)")

    @staticmethod
    def _attempt(fn, what: str):
        try:
            return fn(), None
        except OSError as e:  # a full disk, a lost mount: one clear line, not a traceback
            return None, MidigenError(f"{what} failed: {e}")
        except Exception as e:
            return None, e

    def on_master(self, fn, what: str):
        """Run ``fn`` on rank 0 only; every rank returns together, or every rank raises (see ``agree``).

        ``fn`` must not itself use collectives: the other ranks are already waiting in the agreement.
        """
        result, error = self._attempt(fn, what) if self.master else (None, None)
        self.agree(error, what)
        return result

    def on_all(self, fn, what: str):
        """Run ``fn`` on every rank; if any rank fails, all of them stop here (no collectives in ``fn``)."""
        result, error = self._attempt(fn, what)
        self.agree(error, what)
        return result

    def close(self, ok: bool = True) -> None:
        """Leave the process group; after a failure only tear down what cannot block on the other ranks."""
        if not self.enabled:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            return
        if ok or dist.get_backend() == "gloo":
            dist.destroy_process_group()
            return
        abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
        if abort is not None:  # NCCL: abort, never wait for peers that may be gone
            try:
                abort()
            except Exception:
                pass
