"""A silo's SuperExec that starts each ClientApp task warm, not from a bare interpreter.

Why: Flower 1.41's SuperNode hands every message to a fresh ``flwr-clientapp``
process. Each one imports flwr, torch, opacus and fedprofile again (about 3.5 s
of CPU here, and more when a silo's train and evaluate processes start
together), so on the Deployment Engine a round was dominated by imports, not by
training. Flower's warm executor pools are for Kubernetes and do not serve
ClientApps.

What: exactly Flower's ``flower-superexec`` (same command-line options, same
task loop, same Runtime API client, same ``run_clientapp`` for each task), with
one change: its subprocess executor is replaced by :class:`ForkserverExecutor`.
That one starts a :mod:`multiprocessing` forkserver once, which imports the
heavy modules, and forks a child per task from it. The child runs Flower's own
``run_clientapp`` with the task's token, as ``flwr-clientapp`` would, so every
task is still its own process (its own memory, its own crash) and gets its
inputs only through the SuperNode.

How it is started: the SuperNode runs with ``--isolation process`` and this
runs beside it, on the same host, pointed at the SuperNode's Runtime API::

    flower-supernode ... --isolation process --port 9094
    fedprofile-superexec --runtime-api-address 127.0.0.1:9094 --insecure \\
        --parent-pid <SuperNode pid>

The Runtime API is served on loopback only; ``--parent-pid`` ends this
SuperExec (and its forkserver, whose children end with it) when the SuperNode
ends.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import time
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess

# What the forkserver imports once; every task process starts with them loaded.
PRELOAD = ("flwr.supernode.runtime.run_clientapp", "fedprofile.client.app")
# Flower's default is to poll the SuperNode for a new task once a second; 0.2 s costs
# a few idle requests per second and saves most of that wait on every message.
_POLL_INTERVAL = "0.2"


def _run_task(runtime_api_address: str, token: str, insecure: bool,
              root_certificates_path: str | None, parent_pid: int | None,
              runtime_dependency_install: bool) -> None:
    """One ClientApp task, in a process forked from the warm forkserver."""
    from flwr.supercore.tls import validate_and_resolve_root_certificates
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    run_clientapp(
        runtime_api_address=runtime_api_address, token=token, insecure=insecure,
        certificates=validate_and_resolve_root_certificates(root_certificates_path, insecure),
        parent_pid=parent_pid, runtime_dependency_install=runtime_dependency_install)


class ForkserverExecutor:
    """Flower's SuperExec ``Executor`` protocol, with ClientApp tasks forked warm.

    Other task types (a SuperNode serves only ClientApps) go to Flower's own
    subprocess executor.
    """

    def __init__(self, preload: tuple[str, ...] = PRELOAD) -> None:
        from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor

        self._fallback = SubprocessExecutor()
        self._ctx: ForkServerContext = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(list(preload))
        self._running: dict[BaseProcess, tuple[int, float]] = {}
        # Start the forkserver (and its imports) now, before the first task waits on it.
        from multiprocessing import forkserver
        forkserver.ensure_running()

    def get_eligible_capacity(self, supported_task_types, *, insecure=False,  # noqa: ANN001
                              root_certificates_path=None):  # noqa: ANN001, ANN201
        return self._fallback.get_eligible_capacity(
            supported_task_types, insecure=insecure, root_certificates_path=root_certificates_path)

    def wait_for_capacity(self, task_type=None, *, fab_hash=None, insecure=False,  # noqa: ANN001
                          root_certificates_path=None) -> None:  # noqa: ANN001
        """No capacity gate, as for Flower's subprocess executor."""

    def launch(self, spec):  # noqa: ANN001, ANN201
        from flwr.supercore.constant import TaskType
        from flwr.supercore.superexec.executor.types import LaunchResult

        if spec.task_type != TaskType.CLIENT_APP:
            return self._fallback.launch(spec)
        process = self._ctx.Process(
            target=_run_task, name=f"flwr-clientapp-task-{spec.task_id}",
            args=(spec.runtime_api_address, spec.token, spec.insecure,
                  spec.root_certificates_path, spec.parent_pid,
                  spec.runtime_dependency_install))
        try:
            process.start()
        except OSError as err:
            return LaunchResult.failed(f"could not fork a ClientApp process: {err}")
        self._running[process] = (spec.task_id, time.monotonic())
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap finished task processes and log how long each ran (the silo's own timing)."""
        from flwr.supercore import log

        for process, (task_id, started) in list(self._running.items()):
            if process.is_alive():
                continue
            process.join(timeout=0)
            log(logging.INFO, "ClientApp task %d: process ended after %.2fs (exit code %s)",
                task_id, time.monotonic() - started, process.exitcode)
            del self._running[process]
            process.close()

    def close(self) -> None:
        """Task processes watch the SuperNode's pid and end with it; nothing to release."""
        self.reconcile()


def main(argv: list[str] | None = None) -> None:
    """``flower-superexec``, with ClientApp tasks forked from a warm forkserver."""
    import flwr.supercore.superexec.run_superexec as flower_loop
    from flwr.supercore.cli.flower_superexec import flower_superexec
    from flwr.supercore.constant import ExecutorType

    flower_get_executor = flower_loop.get_executor

    def get_executor(executor_type: ExecutorType, *args: object, **kwargs: object) -> object:
        if executor_type == ExecutorType.SUBPROCESS:
            return ForkserverExecutor()
        return flower_get_executor(executor_type, *args, **kwargs)

    # Flower 1.41 has no option for a custom executor; its loop looks this name up per run.
    flower_loop.get_executor = get_executor
    os.environ.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", _POLL_INTERVAL)
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    flower_superexec()


if __name__ == "__main__":
    main()
