"""The Docker side of the harness: build the image, run ``bench`` in it.

Builds go through the Docker SDK, which uses the engine's classic builder: no BuildKit
secrets, so the host's CA bundle (needed by pip where HTTPS is intercepted) is copied into
the build context as ``.docker-ca/ca-certificates.crt`` (git-ignored; the Dockerfile uses
it in its ``deps`` stage only). Builds use the host network (pip reaches PyPI); containers
run with ``network_mode="none"``, the host's ``data/`` and ``reports/`` bind-mounted, as
the calling user, with GPUs when asked for or when the engine can hand them out.

Containers are locked down (:func:`container_options`, and ``compose.yaml`` alike): never
uid 0 unless asked for (``user``), every capability dropped, ``no-new-privileges``, a
read-only root file system with tmpfs for ``/tmp`` and ``$HOME`` (Keras and matplotlib
caches), and ``data/`` (manifest, archives, prepared caches) mounted read-only, except
that ``bench data prepare`` gets its ``prepared/`` and ``archives/`` (where extraction
happens) writable. Only ``reports/`` is always writable.

The image's provenance (what the build bakes into it, what a run reads back) is
:mod:`harness.provenance`'s; the run half, the image id, is passed here as
``BENCH_IMAGE_ID`` (and ``BENCH_IMAGE_DIGEST`` when the image has a registry digest).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from harness import fsio, paths
from harness.env import git_commit
from harness.errors import EXIT_BAD_INPUT, BenchError, InputError, RunFailure

if TYPE_CHECKING:  # the SDK is imported lazily: `bench --help` should not pay for it
    import docker

DEFAULT_BASE_IMAGE = "transfer-bench-base:bookworm"
IMAGE_REPOSITORY = "transfer-bench"
TF_CHOICES = ("cpu", "cuda")
DEFAULT_TF = "cuda"
WORKSPACE = "/workspace"  # the image's WORKDIR and BENCH_HOME
CACHE_MOUNT = "/cache/data"  # where a BENCH_DATA_DIR outside the project goes
CA_DIR_NAME = ".docker-ca"
CA_FILE_NAME = "ca-certificates.crt"
SETUP_HINT = "run scripts/docker-setup.sh (as root) to install and start it"
# Host variables that mean the same inside the container; paths are remapped instead.
_PASSTHROUGH_SKIP = frozenset(
    {"BENCH_HOME", "BENCH_DATA_DIR", "BENCH_IMAGE_ID", "BENCH_IMAGE_DIGEST"}
)


class DockerUnavailable(BenchError):
    """The Docker engine cannot be reached (exit 2): tells how to set it up."""

    exit_code = EXIT_BAD_INPUT


def default_tag(tf: str) -> str:
    """The image name for a TensorFlow flavour: ``transfer-bench:cpu`` / ``transfer-bench:cuda``."""
    _check_tf(tf)
    return f"{IMAGE_REPOSITORY}:{tf}"


def _check_tf(tf: str) -> None:
    if tf not in TF_CHOICES:
        raise InputError(f"unknown TensorFlow flavour tf={tf!r}; choose one of {TF_CHOICES}")


def connect() -> docker.DockerClient:
    """A client for the engine named by ``DOCKER_HOST`` (default: the local socket)."""
    import docker
    from docker.errors import DockerException

    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except DockerException as exc:
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DockerUnavailable(
            f"Docker engine not reachable at {where} ({reason}); {SETUP_HINT}"
        ) from None
    return client


# --- build -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildConfig:
    """What to build: TensorFlow flavour, base image, tag, build context."""

    tf: str = DEFAULT_TF
    base_image: str = DEFAULT_BASE_IMAGE
    tag: str | None = None  # default: transfer-bench:<tf>
    context: Path | None = None  # default: the project root
    ca_bundle: Path | None = None  # default: the host's bundle, when it has one
    nocache: bool = False
    network_mode: str = "host"  # pip inside the build needs PyPI

    def resolved_tag(self) -> str:
        return self.tag or default_tag(self.tf)


@dataclass(frozen=True)
class BuiltImage:
    """A finished build: tag, image id, size in bytes and how long the build took."""

    tag: str
    image_id: str
    size: int
    seconds: float
    build_args: dict[str, str] = field(default_factory=dict)


def host_ca_bundle() -> Path | None:
    """The CA bundle the host's own pip/requests use, if there is one."""
    for var in ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        value = os.environ.get(var)
        if value and Path(value).is_file():
            return Path(value)
    default = Path("/etc/ssl/certs/ca-certificates.crt")
    return default if default.is_file() else None


def stage_ca_bundle(context: Path, bundle: Path | None) -> Path | None:
    """Copy ``bundle`` to ``<context>/.docker-ca/`` for pip in the build; None if no bundle.

    Copied only when the content changed, so the build cache stays valid.
    """
    target = context / CA_DIR_NAME / CA_FILE_NAME
    if bundle is None:
        return None
    if not bundle.is_file():
        raise InputError(f"CA bundle {bundle} is not a file; pass an existing PEM bundle")
    data = bundle.read_bytes()
    if not target.is_file() or target.read_bytes() != data:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{CA_FILE_NAME}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
    return target


def build_image(
    config: BuildConfig,
    *,
    client: docker.DockerClient | None = None,
    log: Callable[[str], None] | None = None,
) -> BuiltImage:
    """Build the image with the classic builder; ``log`` gets each line of build output.

    Raises :class:`RunFailure` naming the failed step (with the last lines of output) when
    the build fails, and :class:`InputError` when the base image is missing.
    """
    from docker.errors import APIError, ImageNotFound

    _check_tf(config.tf)
    client = client or connect()
    context = (config.context or paths.project_root()).resolve()
    if not (context / "Dockerfile").is_file():
        raise InputError(f"{context}: no Dockerfile; run from the transfer-bench checkout")
    try:
        base = client.images.get(config.base_image)
    except ImageNotFound:
        hint = (
            SETUP_HINT.replace("install and start it", "build it")
            if config.base_image == DEFAULT_BASE_IMAGE
            else "pull or build it first, or pass --base IMAGE"
        )
        raise InputError(f"base image {config.base_image!r} not found; {hint}") from None
    bundle = config.ca_bundle if config.ca_bundle is not None else host_ca_bundle()
    stage_ca_bundle(context, bundle)
    build_args = {
        "BASE_IMAGE": config.base_image,
        "BASE_IMAGE_ID": base.id,
        "TF_EXTRA": config.tf,
        "GIT_COMMIT": git_commit(context) or "",
    }
    tag = config.resolved_tag()
    started = time.perf_counter()
    tail: list[str] = []
    image_id = ""
    try:
        stream = client.api.build(
            path=str(context),
            tag=tag,
            buildargs=build_args,
            network_mode=config.network_mode,
            nocache=config.nocache,
            pull=False,
            rm=True,
            forcerm=True,
            decode=True,
        )
        for item in stream:
            if "error" in item:
                tail.append(str(item["error"]).strip())
                context_lines = " | ".join(line for line in tail[-6:] if line)
                raise RunFailure(f"docker build of {tag} failed: {context_lines}")
            text = item.get("stream") or item.get("status") or ""
            if aux := item.get("aux"):
                image_id = aux.get("ID", image_id)
            for line in text.splitlines():
                if line.strip():
                    tail = [*tail[-40:], line]
                    if log is not None:
                        log(line)
    except APIError as exc:
        raise RunFailure(f"docker build of {tag} failed: {exc.explanation or exc}") from None
    seconds = time.perf_counter() - started
    image = client.images.get(image_id or tag)
    return BuiltImage(
        tag=tag,
        image_id=image.id,
        size=int(image.attrs.get("Size", 0)),
        seconds=seconds,
        build_args=build_args,
    )


# --- run ---------------------------------------------------------------------------------


def gpus_available(client: docker.DockerClient) -> bool:
    """Whether the engine can hand GPUs to a container: an NVIDIA device and toolkit."""
    if not (Path("/dev/nvidiactl").exists() or Path("/dev/dxg").exists()):
        return False
    runtimes = client.info().get("Runtimes") or {}
    return "nvidia" in runtimes or shutil.which("nvidia-container-runtime-hook") is not None


def image_identity(image: Any) -> dict[str, str]:
    """``BENCH_IMAGE_ID`` (and ``BENCH_IMAGE_DIGEST`` when pushed) for a docker Image."""
    env = {"BENCH_IMAGE_ID": image.id}
    digests = image.attrs.get("RepoDigests") or []
    if digests:
        env["BENCH_IMAGE_DIGEST"] = digests[0]
    return env


# Security options of every container (compose.yaml says the same).
CAP_DROP = ("ALL",)
SECURITY_OPT = ("no-new-privileges:true",)
TMPFS_OPTIONS = "rw,exec,nosuid,nodev,mode=1777,size=1g"
# Cache variables whose folders must be writable in the read-only root (tmpfs when outside
# $HOME, which is a tmpfs itself).
_CACHE_VARS = ("KERAS_HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR")
# `bench data prepare` writes these folders of data/ (the extraction of archives happens in
# archives/extracted/); every other command gets data/ read-only.
PREPARE_WRITES = ("prepared", "archives")


@dataclass(frozen=True)
class RunConfig:
    """How to run ``bench ARGS`` in the container."""

    image: str
    gpus: bool | None = None  # None: when available
    data_dir: Path | None = None  # host folder holding manifest.json; default <root>/data
    cache_dir: Path | None = None  # host BENCH_DATA_DIR, when it differs from data_dir
    reports_dir: Path | None = None  # default <root>/reports
    user: str | None = None  # default: the calling uid:gid, never 0 (see default_user)
    environment: Mapping[str, str] = field(default_factory=dict)


def writes_data(args: Sequence[str]) -> bool:
    """Whether ``bench ARGS`` is ``bench data prepare …`` (options before it skipped)."""
    words = [a for a in args if not a.startswith("-")]
    return words[:2] == ["data", "prepare"]


def _mounts(
    config: RunConfig, *, writable_data: bool = False
) -> tuple[list[Any], dict[str, str], list[Path]]:
    """Bind mounts: data/ read-only (``writable_data``: its prepared/ and archives/ not),
    the BENCH_DATA_DIR caches likewise, reports/ writable; and the folders created here."""
    from docker.types import Mount

    data = (config.data_dir or paths.project_root() / "data").resolve()
    reports = (config.reports_dir or paths.reports_dir()).resolve()
    if not (data / "manifest.json").is_file():
        raise InputError(
            f"{data}: no manifest.json; pass the data folder of a transfer-bench checkout"
        )
    cache = config.cache_dir
    if cache is None and os.environ.get("BENCH_DATA_DIR"):
        cache = paths.data_dir()
    caches = (data, f"{WORKSPACE}/data")
    mounts = [Mount(f"{WORKSPACE}/data", str(data), type="bind", read_only=True)]
    env: dict[str, str] = {}
    created: list[Path] = []

    def make(folder: Path) -> None:
        # Created here, by the calling user: an absent source would be created root-owned.
        if not folder.is_dir():
            with fsio.guard(folder, "create"):
                folder.mkdir(parents=True, exist_ok=True)
            created.append(folder)

    if cache is not None and cache.resolve() != data:
        make(cache)
        mounts.append(Mount(CACHE_MOUNT, str(cache.resolve()), type="bind", read_only=True))
        env["BENCH_DATA_DIR"] = CACHE_MOUNT
        caches = (cache.resolve(), CACHE_MOUNT)
    if writable_data:
        host, inside = caches
        for name in PREPARE_WRITES:
            make(host / name)
            mounts.append(Mount(f"{inside}/{name}", str(host / name), type="bind"))
    make(reports)
    mounts.append(Mount(f"{WORKSPACE}/reports", str(reports), type="bind"))
    return mounts, env, created


def default_user(reports: Path, environ: Mapping[str, str] | None = None) -> str:
    """The ``uid:gid`` a container runs as when no ``--user`` is given: never root.

    The calling user; when that is root, the user who ran ``sudo`` (``SUDO_UID``), else
    the owner of the reports folder; when that is root too, an InputError asking for
    ``--user`` (``--user 0:0`` runs as root on purpose).
    """
    env = os.environ if environ is None else environ
    if os.getuid() != 0:
        return f"{os.getuid()}:{os.getgid()}"
    sudo_uid, sudo_gid = env.get("SUDO_UID", ""), env.get("SUDO_GID", "")
    if sudo_uid.isdigit() and int(sudo_uid) != 0:
        return f"{sudo_uid}:{sudo_gid if sudo_gid.isdigit() else sudo_uid}"
    with fsio.guard(reports, "read"):
        owner = reports.stat()
    if owner.st_uid != 0:
        return f"{owner.st_uid}:{owner.st_gid}"
    raise InputError(
        f"bench docker run as root with {reports} owned by root: the container does not run "
        "as uid 0 unless asked; pass --user UID:GID (a user that may write to that folder), "
        "or --user 0:0 to run it as root on purpose"
    )


def _tmpfs(image: Any) -> dict[str, str]:
    """tmpfs mounts for the read-only root: /tmp, $HOME and cache folders outside $HOME."""
    image_env = dict(
        item.split("=", 1)
        for item in (image.attrs.get("Config", {}).get("Env") or [])
        if "=" in item
    )
    home = image_env.get("HOME", "/home/bench")
    folders = {"/tmp", home}
    for var in _CACHE_VARS:
        folder = image_env.get(var)
        if folder and not (folder + "/").startswith(home.rstrip("/") + "/"):
            folders.add(folder)
    return {folder: TMPFS_OPTIONS for folder in sorted(folders)}


def container_options(
    config: RunConfig,
    *,
    client: docker.DockerClient | None = None,
    writable_data: bool = False,
) -> dict[str, Any]:
    """Keyword arguments for ``client.containers.create`` (image id first), minus the command.

    No network, data/ bind-mounted read-only (``writable_data``: prepared/ and archives/
    writable, for ``bench data prepare``) and reports/ writable, the image id in
    ``BENCH_IMAGE_ID``, the host's ``BENCH_*`` settings (profile, debug …), the calling
    uid:gid (never root unless ``config.user`` says so), no capabilities, no new
    privileges, a read-only root with tmpfs for /tmp and $HOME, GPUs when asked for or
    (``gpus=None``) when the engine can hand them out.
    """
    from docker.errors import ImageNotFound
    from docker.types import DeviceRequest

    client = client or connect()
    try:
        image = client.images.get(config.image)
    except ImageNotFound:
        tf = config.image.rpartition(":")[2]
        flavour = f" --tf {tf}" if tf in TF_CHOICES else ""
        raise InputError(
            f"image {config.image!r} not found; build it with `bench docker build{flavour}`"
        ) from None
    mounts, env, created = _mounts(config, writable_data=writable_data)
    user = config.user or default_user(Path(mounts[-1]["Source"]))
    uid, _, gid = user.partition(":")
    if os.getuid() == 0 and uid.isdigit() and int(uid) != 0:
        for folder in created:  # root made them for the container's user: theirs
            with fsio.guard(folder, "hand over"):
                os.chown(folder, int(uid), int(gid or uid))
    environment = {
        key: value
        for key, value in os.environ.items()
        if key.startswith("BENCH_") and key not in _PASSTHROUGH_SKIP
    }
    environment |= env | image_identity(image) | dict(config.environment)
    gpus = config.gpus if config.gpus is not None else gpus_available(client)
    return {
        "image": image.id,
        "environment": environment,
        "mounts": mounts,
        "network_mode": "none",
        "user": user,
        "working_dir": WORKSPACE,
        "cap_drop": list(CAP_DROP),
        "security_opt": list(SECURITY_OPT),
        "read_only": True,
        "tmpfs": _tmpfs(image),
        "device_requests": [DeviceRequest(count=-1, capabilities=[["gpu"]])] if gpus else None,
        "labels": {"io.transfer-bench.image": config.image},
    }


def run_in_container(
    args: Sequence[str],
    config: RunConfig,
    *,
    client: docker.DockerClient | None = None,
    stdout: IO[bytes] | None = None,
    stderr: IO[bytes] | None = None,
) -> int:
    """Run ``bench ARGS`` in ``config.image``, stream its output, return its exit code.

    The container is set up by :func:`container_options`; it is removed afterwards and
    Ctrl-C stops it.
    """
    from docker.errors import APIError

    client = client or connect()
    options = container_options(config, client=client, writable_data=writes_data(args))
    out = stdout or sys.stdout.buffer
    err = stderr or sys.stderr.buffer
    try:
        container = client.containers.create(command=list(args), **options)
    except APIError as exc:
        raise RunFailure(
            f"cannot create a container from {config.image}: {exc.explanation}"
        ) from None
    try:
        try:
            stream = container.attach(stdout=True, stderr=True, stream=True, logs=True, demux=True)
            container.start()
        except APIError as exc:
            text = str(exc.explanation or exc)
            if "device driver" in text or "gpu" in text.lower():
                raise InputError(
                    f"cannot start {config.image} with GPUs ({text}); install the NVIDIA driver "
                    "and the NVIDIA container toolkit on the host, or run without --gpus"
                ) from None
            raise RunFailure(f"cannot start {config.image}: {text}") from None
        try:
            for chunk_out, chunk_err in stream:
                if chunk_out:
                    out.write(chunk_out)
                    out.flush()
                if chunk_err:
                    err.write(chunk_err)
                    err.flush()
        except BrokenPipeError:  # e.g. `bench docker run -- list --json | head`
            with contextlib.suppress(Exception):
                container.stop(timeout=5)
            _silence_broken_stdout(out)
            return 141  # what a shell reports for a process killed by SIGPIPE
        return int(container.wait()["StatusCode"])
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            container.stop(timeout=10)
        raise
    finally:
        with contextlib.suppress(Exception):
            container.remove(force=True)


def _silence_broken_stdout(out: IO[bytes]) -> None:
    """After a closed pipe, point stdout at /dev/null so the exit-time flush stays quiet."""
    if out is sys.stdout.buffer:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
