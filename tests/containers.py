"""The container engine for the container suite: the project image built as `make image` builds it, podman's
Docker-compatible API for kfp's DockerRunner, and containers started the way Kubernetes starts them.

The engine is the one `make image` picks (image/engine.sh: a running docker, else podman). Containers share
the host's network and bind loopback addresses only.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def engine() -> tuple[str, dict[str, str]]:
    """The engine's command and the environment it needs (podman: the project's containers.conf)."""
    done = subprocess.run(["bash", "-c", f'source "{ROOT}/image/engine.sh" && echo "$ENGINE" && '
                           'echo "${CONTAINERS_CONF:-}"'], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"no container engine for the container suite: {done.stderr.strip()}")
    name, conf = done.stdout.splitlines()
    return name, ({"CONTAINERS_CONF": conf} if conf else {})


def build_image(image: str) -> float:
    """`make image IMAGE=image` (the engine's layer cache makes an unchanged rebuild quick); seconds taken."""
    start = time.perf_counter()
    done = subprocess.run(["make", "--no-print-directory", "image", f"IMAGE={image}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        pytest.fail(f"make image failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")
    return time.perf_counter() - start


def run(args: list[str], timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """One engine command (``podman run ...``), its output captured."""
    name, env = engine()
    done = subprocess.run([name, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **env})
    if check and done.returncode != 0:
        pytest.fail(f"{name} {' '.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done


@contextlib.contextmanager
def docker_api(folder: Path) -> Iterator[str]:
    """A Docker API endpoint for the docker Python client (kfp's DockerRunner): docker's own, or
    ``podman system service`` on a socket in ``folder``, for as long as the block runs."""
    from pipelines.docker_runner import podman_api

    name, env = engine()
    if name == "docker":
        yield os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        return
    os.environ.update(env)  # podman's settings for the service
    with podman_api(folder) as url:
        yield url


@contextlib.contextmanager
def container(name: str, image: str, command: list[str], *, mounts: dict[Path, str] | None = None,
              env: dict[str, str] | None = None, read_only: bool = True) -> Iterator[str]:
    """A detached container on the host network, as a pod runs it: the image's user, a read-only root file
    system with a writable /tmp, no capabilities. Yields its name; its log is shown when the block fails."""
    args = ["run", "-d", "--name", name, "--network=host", "--cap-drop=ALL",
            "--security-opt=no-new-privileges", "--tmpfs", "/tmp:rw,size=512m"]
    if read_only:
        args.append("--read-only")
    for source, target in (mounts or {}).items():
        args += ["-v", f"{source}:{target}"]
    for key, value in (env or {}).items():
        args += ["-e", f"{key}={value}"]
    run(["rm", "-f", name], check=False)
    run([*args, image, *command])
    try:
        yield name
    except BaseException:
        print(run(["logs", name], check=False).stderr[-5000:])
        raise
    finally:
        run(["rm", "-f", name], check=False, timeout=60)


class ContainerProcess:
    """A container seen as ``serving.local.wait_ready`` sees a server process: ``poll()`` and ``returncode``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.returncode: int | None = None

    def poll(self) -> int | None:
        state = run(["inspect", "-f", "{{.State.Running}} {{.State.ExitCode}}", self.name], check=False).stdout.split()
        if state and state[0] != "true":
            self.returncode = int(state[1])
        return self.returncode


def wait_ready(name: str, url: str, timeout_s: float = 240) -> None:
    """Until ``url`` answers 200; the test fails with the container's log if it exits or times out first."""
    from serving.local import wait_ready as wait

    try:
        wait(url, ContainerProcess(name), lambda: logs(name), timeout_s)
    except RuntimeError as exc:
        pytest.fail(f"container {name}: {exc}")


def logs(name: str) -> str:
    done = run(["logs", name], check=False)
    return done.stdout + done.stderr
