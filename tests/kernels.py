"""Kernel managers for the test suite and the execute script: unix sockets, not TCP ports.

For each kernel, jupyter_client finds five free TCP ports by binding and releasing them, and
the kernel binds them a moment later. With two xdist workers starting kernels at once, another
process can take one of those ports in between: the kernel dies with "Address already in use"
and every cell of its notebook fails (this happened in CI). On POSIX systems these managers
use the IPC transport instead, with socket paths unique to each kernel, so nothing can collide.
jupyter_client removes the socket files when the kernel is shut down.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from typing import Any

from jupyter_client.manager import AsyncKernelManager, KernelManager


def _ipc(kwargs: dict[str, Any]) -> dict[str, Any]:
    if os.name == "posix" and "transport" not in kwargs:
        # A short absolute path (unix socket paths are limited to about 100 bytes), never
        # the working directory, which is where a relative default would put them.
        kwargs.update(
            transport="ipc", ip=os.path.join(tempfile.gettempdir(), f"asqla-kernel-{uuid.uuid4().hex[:12]}")
        )
    return kwargs


class IPCKernelManager(KernelManager):
    """jupyter_client's KernelManager (as used by nbval and tests/learner_flow.py) over IPC."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**_ipc(kwargs))


class AsyncIPCKernelManager(AsyncKernelManager):
    """The same for nbclient's NotebookClient (its kernel_manager_class)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**_ipc(kwargs))
