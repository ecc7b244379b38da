"""A federation on Flower's Deployment Engine: SuperLink and SuperNodes as real processes.

What a deployment needs, and what this module does on one machine (loopback)
so that it can be run and tested end to end:

1. credentials (:mod:`fedprofile.privacy.credentials`): a CA and a TLS
   certificate for the SuperLink, and one EC key pair per SuperNode;
2. a SuperLink serving its HTTP API over TLS with SuperNode authentication on
   (``--enable-supernode-auth``): only SuperNodes whose public key was
   registered (``flwr supernode register``) may join;
3. one SuperNode per silo, trusting only the CA, signing with its own key, and
   told which silo it serves through its node config (``silo-dir``, and
   ``key-file`` for the silo's secret);
4. ``flwr run`` of the same app the simulation runs, against that federation.

Every process gets its own session, so :meth:`LocalDeployment.stop` stops
each one with everything it started (:func:`.processes.terminate_tree`), after
a run, a failure or Ctrl-C. On real hosts the same commands run on different
machines; the README's deployment section says which file goes where.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedprofile.privacy.credentials import TlsFiles, make_supernode_key, make_tls

from .local_superlink import (FlowerProcesses, SimulationError, flower_env, flower_executable,
                              free_port, stream_flwr_run, wait_for_port)

CONNECTION_NAME = "fedprofile-deployment"
_JOIN_TIMEOUT = 90.0


class DeploymentError(SimulationError):
    """The deployment could not start, a SuperNode could not join, or the run failed."""


@dataclass
class SuperNodeProcess:
    """One silo's SuperNode: its process, log and key files."""

    name: str
    silo_dir: Path
    process: subprocess.Popen[bytes]
    log: Path
    private_key: Path
    public_key: Path
    superexec: subprocess.Popen[bytes] | None = None


@dataclass
class LocalDeployment(FlowerProcesses):
    """A SuperLink (TLS, SuperNode authentication) and one SuperNode per silo, on loopback.

    ``key_file``: the silos' secret key file, given to every SuperNode as node
    config ``key-file`` (in a real deployment each host has its own).
    """

    silos: list[Path] = field(default_factory=list)
    key_file: str = ""
    warm: bool = True
    port: int = 0
    tls: TlsFiles | None = None
    superlink: subprocess.Popen[bytes] | None = None
    supernodes: dict[str, SuperNodeProcess] = field(default_factory=dict)

    @property
    def credentials(self) -> Path:
        return self.workdir / "credentials"

    def start(self) -> None:
        """Credentials, SuperLink, registered keys, SuperNodes; returns once all are online."""
        names = [s.name for s in self.silos]
        if len(set(names)) != len(names):
            raise DeploymentError(f"two silos share a name: {sorted(names)}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tls = make_tls(self.credentials)
        self.port = free_port()
        self.write_connection(CONNECTION_NAME, self.port,
                              f'root-certificates = "{self.tls.ca_cert}"')
        self.start_superlink()
        for silo in self.silos:
            private, public = make_supernode_key(self.credentials, silo.name)
            self.register(public)
            self.supernodes[silo.name] = self.start_supernode(silo.name, silo, private, public)
        self.wait_online(len(self.silos))

    def start_superlink(self) -> None:
        """The SuperLink: TLS only, SuperNode authentication on, its state in ``superlink.db``.

        The database keeps the registered SuperNode keys and the runs, so a
        SuperLink started again on the same port and database admits the same
        SuperNodes without registering them again.
        """
        assert self.tls is not None
        log = self.workdir / "superlink.log"
        self.superlink = self.spawn([
            flower_executable("flower-superlink"),
            "--ssl-ca-certfile", str(self.tls.ca_cert), "--ssl-certfile", str(self.tls.cert),
            "--ssl-keyfile", str(self.tls.key), "--enable-supernode-auth",
            "--isolation", "subprocess", "--host", "127.0.0.1", "--port", str(self.port),
            "--database", str(self.workdir / "superlink.db"),
            "--disable-runtime-dependency-installation"], log)
        wait_for_port(self.superlink, self.port, "flower-superlink", log)

    def restart_superlink(self) -> None:
        """Stop the SuperLink with all it started (its ServerApp included) and start it again."""
        if self.superlink is not None:
            self.end(self.superlink)
        self.start_superlink()

    def _flwr(self, *args: str, timeout: float = 60.0) -> str:
        proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
            [flower_executable("flwr"), *args], env=flower_env(self.flwr_home),
            capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise DeploymentError(f"`flwr {' '.join(args[:2])}` failed: "
                                  f"{(proc.stdout + proc.stderr).strip()[-500:]}")
        return proc.stdout

    def register(self, public_key: Path) -> None:
        """Admit a SuperNode's public key (the SuperLink refuses unregistered ones)."""
        self._flwr("supernode", "register", str(public_key), CONNECTION_NAME)

    def start_supernode(self, name: str, silo_dir: Path, private_key: Path, public_key: Path,
                        max_retries: int | None = None) -> SuperNodeProcess:
        """Start one silo's SuperNode (TLS, signed with its own key, its silo in node config)."""
        node_config = f"silo-dir='{Path(silo_dir).resolve()}'"
        if self.key_file:
            node_config += f" key-file='{Path(self.key_file).resolve()}'"
        assert self.tls is not None
        log = self.workdir / f"supernode-{name}.log"
        runtime_port = free_port()
        command = [
            flower_executable("flower-supernode"), "--root-certificates", str(self.tls.ca_cert),
            "--superlink", f"127.0.0.1:{self.port}",
            "--auth-supernode-private-key", str(private_key),
            "--auth-supernode-public-key", str(public_key),
            "--node-config", node_config,
            "--isolation", "process" if self.warm else "subprocess",
            "--host", "127.0.0.1", "--port", str(runtime_port)]
        if max_retries is not None:
            command += ["--max-retries", str(max_retries)]
        node = SuperNodeProcess(name, Path(silo_dir), self.spawn(command, log), log,
                                private_key, public_key)
        if self.warm:
            node.superexec = self.spawn(
                [flower_executable("fedprofile-superexec"), "--insecure",
                 "--runtime-api-address", f"127.0.0.1:{runtime_port}",
                 "--parent-pid", str(node.process.pid)],
                self.workdir / f"superexec-{name}.log")
        return node

    def restart_supernode(self, name: str) -> SuperNodeProcess:
        """Start a silo's SuperNode again (same key, same silo) after it stopped or was killed."""
        old = self.supernodes[name]
        self.end_supernode(old)
        self.supernodes[name] = self.start_supernode(name, old.silo_dir, old.private_key,
                                                     old.public_key)
        return self.supernodes[name]

    def end_supernode(self, node: SuperNodeProcess) -> None:
        """Stop a silo's SuperNode and its SuperExec, each with all it started."""
        self.end(node.process)
        if node.superexec is not None:
            self.end(node.superexec)

    def online(self) -> int:
        """How many SuperNodes the SuperLink reports online."""
        out = self._flwr("supernode", "ls", CONNECTION_NAME, "--format", "json")
        try:
            nodes = json.loads(out).get("nodes", [])
        except (ValueError, AttributeError):
            raise DeploymentError(f"unexpected `flwr supernode ls` output: {out[:200]}") from None
        return sum(1 for n in nodes if str(n.get("status", "")).lower() == "online")

    def wait_online(self, count: int, timeout: float = _JOIN_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.supernodes.values():
                if node.process.poll() is not None:
                    raise DeploymentError(f"the SuperNode of {node.name} exited with code "
                                          f"{node.process.returncode}; see {node.log}")
            if self.online() >= count:
                return
            time.sleep(1.0)
        raise DeploymentError(f"only {self.online()} of {count} SuperNodes joined within "
                              f"{timeout:.0f}s; see the supernode-*.log files in {self.workdir}")

    def run(self, app_dir: Path, run_config: Mapping[str, Any], on_line: Callable[[str], None],
            log_path: Path) -> None:
        """``flwr run`` the app against this federation and stream its log."""
        stream_flwr_run(app_dir, CONNECTION_NAME, run_config, self.flwr_home, on_line, log_path)

    def stop(self) -> None:
        """Stop every SuperNode, then the SuperLink, each with all it started."""
        for node in self.supernodes.values():
            self.end_supernode(node)
        self.supernodes.clear()
        if self.superlink is not None:
            self.end(self.superlink)
            self.superlink = None


def run_deployment(silos: list[Path], run_config: Mapping[str, Any], workdir: Path,
                   on_line: Callable[[str], None], key_file: str = "", warm: bool = True) -> None:
    """One run of the fedprofile app on a loopback deployment of ``silos``.

    ``warm``: each silo's ClientApp tasks are forked from a process that has
    already imported torch and opacus (:mod:`fedprofile.client.superexec`);
    ``False`` uses Flower's own SuperExec, one fresh interpreter per message.
    """
    from .local_superlink import app_pyproject

    app_dir = workdir / "flower-app"
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text(app_pyproject())
    with LocalDeployment(workdir / "deployment", silos, key_file, warm=warm) as deployment:
        on_line(f"fedprofile: deployment up: SuperLink on 127.0.0.1:{deployment.port} (TLS, "
                f"SuperNode authentication), {len(silos)} SuperNodes registered and online")
        deployment.run(app_dir, run_config, on_line, workdir / "flower.log")
