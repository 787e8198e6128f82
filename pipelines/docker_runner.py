"""Every pipeline task in the project image: ``kfp.local.DockerRunner`` made exact about failures and paths.

kfp's own container loop runs tasks with ``auto_remove=True`` and, when the engine has already removed an
exited container (podman's Docker API does), reads the lost exit status as success. Here a task's container
is kept until its exit status is read, then removed, so a failing task is reported as failed with either
engine. The task runs as the image's user with the workspace mounted at the same path, so every path the
steps are given (pipeline root, Feast repository, serving root, Milvus Lite database) is the host's own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from components import BASE_IMAGE
from notellm.errors import NoteLLMError

IMAGE_UID = 1000
"""The image's user (Dockerfile: ``USER 1000``): it must be able to write the workspace."""
PASSED_ENV = ("OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM", "NOTELLM_LOG_LEVEL")
"""Host variables a task sees too (thread counts matter on a small machine)."""


def _engine_client() -> Any:
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # docker raises several unrelated types for "no engine here"
        raise NoteLLMError(f"--runner docker needs a running container engine ({exc}): start docker, or install "
                           "podman (its Docker API is started for the run when DOCKER_HOST is unset)") from exc
    return client


@contextlib.contextmanager
def podman_api(folder: Path, timeout_s: float = 30) -> Iterator[str]:
    """``podman system service`` on a socket in ``folder`` for as long as the block runs; yields its
    ``DOCKER_HOST`` URL (podman reads ``CONTAINERS_CONF`` as usual)."""
    socket = folder / "podman.sock"
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{socket}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout_s
        while not socket.exists():
            if service.poll() is not None or time.monotonic() > deadline:
                raise NoteLLMError(f"podman system service did not start (exit status {service.poll()})")
            time.sleep(0.2)
        yield f"unix://{socket}"
    finally:
        service.terminate()
        service.wait(20)


@contextlib.contextmanager
def docker_host() -> Iterator[None]:
    """A Docker API for the block: docker's (or ``DOCKER_HOST``'s), else podman's, started for it."""
    if os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists() or not shutil.which("podman"):
        yield
        return
    with tempfile.TemporaryDirectory(prefix="notellm-podman-") as folder, podman_api(Path(folder)) as url:
        os.environ["DOCKER_HOST"] = url
        try:
            yield
        finally:
            os.environ.pop("DOCKER_HOST", None)


def check_image(image: str) -> None:
    """Refuse early when the image is not on this machine (kfp would try to pull it from a registry)."""
    import docker

    client = _engine_client()
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        raise NoteLLMError(f"image {image} is not on this machine: build it with `make image IMAGE={image}`") from None
    finally:
        client.close()


PATH_PARAMETERS = ("feature_repo", "serving_root", "milvus_uri", "reference_data")


def require_under(workspace: Path, parameters: dict[str, Any]) -> None:
    """Refuse path parameters outside ``workspace``: a task's container sees no other host folder."""
    paths = [(name, str(parameters.get(name) or "")) for name in PATH_PARAMETERS]
    paths += [tuple(o.split("=", 1)) for o in parameters.get("overrides", []) if o.split("=", 1)[0].endswith("_path")]
    for name, value in paths:
        if value and "://" not in value and not Path(value).resolve().is_relative_to(workspace):
            raise NoteLLMError(f"{name}={value} lies outside the workspace {workspace}, the only folder the "
                               "tasks' containers see: move it under the workspace")


def prepare_workspace(workspace: Path) -> None:
    """Make ``workspace`` writable by the image's user (root on the host hands it over; others must match)."""
    workspace.mkdir(parents=True, exist_ok=True)
    if os.getuid() == 0:
        for path in [workspace, *workspace.rglob("*")]:
            if path.stat().st_uid != IMAGE_UID and not path.is_symlink():
                os.chown(path, IMAGE_UID, IMAGE_UID)
    elif os.getuid() != IMAGE_UID and not os.access(workspace, os.W_OK):
        raise NoteLLMError(f"{workspace} must be writable by the image's user (uid {IMAGE_UID}): "
                           f"chmod -R a+rwX {workspace}")


LOG_DRAIN_S = 10.0  # how long the log stream may lag the container's exit


def _run_container(workspace: Path, override: str | None) -> Any:
    """A replacement for kfp's ``run_docker_container``: same arguments, the exit status read before removal."""
    import docker

    def run(client: docker.DockerClient, image: str, command: list[str], volumes: dict[str, Any],
            **run_args: Any) -> int:
        volumes = {**volumes, str(workspace): {"bind": str(workspace), "mode": "rw"}}
        env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
        run_args["environment"] = {**env, **run_args.get("environment", {})}
        container = client.containers.run(image=override or image, command=command, detach=True,
                                          volumes=volumes, auto_remove=False, **run_args)
        try:
            stream = container.logs(stream=True, follow=True)
            printed = threading.Event()

            def pump() -> None:
                with contextlib.suppress(Exception):  # the stream is closed under it below
                    for line in stream:
                        printed.set()
                        print(line.decode(errors="replace"), end="")

            thread = threading.Thread(target=pump, daemon=True)
            thread.start()
            status = int(container.wait()["StatusCode"])
            thread.join(LOG_DRAIN_S)
            if thread.is_alive():  # podman can leave a follow stream open after a quick exit
                stream.close()
                if not printed.is_set():
                    print(container.logs(stream=False).decode(errors="replace"), end="")
            return status
        finally:
            with contextlib.suppress(docker.errors.APIError):
                container.remove(force=True)

    return run


@contextlib.contextmanager
def docker_runner(workspace: Path, image: str | None = None) -> Iterator[Any]:
    """A ``kfp.local.DockerRunner`` for tasks under ``workspace`` in ``image`` (default: the components' image)."""
    from kfp import local
    from kfp.local import docker_task_handler

    with docker_host():
        check_image(image or BASE_IMAGE)
        prepare_workspace(workspace)
        original = docker_task_handler.run_docker_container
        docker_task_handler.run_docker_container = _run_container(workspace, image)
        try:
            yield local.DockerRunner()
        finally:
            docker_task_handler.run_docker_container = original
