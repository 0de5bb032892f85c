"""The memory a worker's trial process may use: a trial past it fails with reason
``resources`` and the worker goes on to its next trial, where it would otherwise have taken
the host (the kernel's OOM killer picks any process) or the whole GPU.

Set in each supervised child before it runs a trial (``hpo worker`` calls ``limit_memory``):

- CPU: ``RLIMIT_AS``, the process's address space, so an allocation past it fails at once
  (Python's MemoryError, torch's "can't allocate memory") instead of paging the host. It
  counts what is mapped, not only what is resident (libraries, thread stacks, allocator
  arenas: ~2 GB for a worker before its first trial), hence ``RUNTIME_GB`` above the
  estimate's limit by default.
- CUDA: torch's per-process share of the GPU (``set_per_process_memory_fraction``), only where
  ``HPO_TRIAL_MEMORY_GB`` asks for it; CUDA reserves address space far past what it uses, so
  RLIMIT_AS would refuse its start. Past it torch raises its OutOfMemoryError (reason
  ``oom``).
"""

from __future__ import annotations

import resource

from hpo.core.estimate import GB
from hpo.core.settings import Settings

RESOURCES = "resources"
RUNTIME_GB = 4.0


def address_space_limit(settings: Settings) -> int:
    """Bytes of address space a CPU trial process may map."""
    return int((settings.trial_memory_gb or settings.worker_memory_gb + RUNTIME_GB) * GB)


def limit_memory(settings: Settings, device: str) -> None:
    """Put this process under its memory limit for ``device`` (a lower one already set, by
    the operator's ``ulimit -v`` or a container, stays)."""
    if device.startswith("cuda"):
        if settings.trial_memory_gb is not None:
            import torch  # only a CUDA worker pays for the import here

            index = torch.device(device).index or 0
            total = torch.cuda.get_device_properties(index).total_memory
            share = min(1.0, settings.trial_memory_gb * GB / total)
            torch.cuda.set_per_process_memory_fraction(share, index)
        return
    if device != "cpu":
        return  # mps and others: their own allocators, no limit of ours
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = address_space_limit(settings)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    if soft == resource.RLIM_INFINITY or soft > limit:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation refused under the limit on CPU: Python's MemoryError
    (numpy and pyarrow raise subclasses), or torch's CPU allocator, which raises a plain
    RuntimeError."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
