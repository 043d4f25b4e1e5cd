"""What this installation is made of: its distributions, and the image's build provenance.

Written at build time, read at run time. :func:`write_image_provenance` runs once, in the
image, as the Dockerfile's last step, and bakes the build half into
``/etc/transfer-bench/image.json`` (base image, build args, the exact package set and its
digest, harness version). :func:`container_fingerprint` joins it with the run half, the
image id passed as ``BENCH_IMAGE_ID`` (and ``BENCH_IMAGE_DIGEST`` when the image has a
registry digest), for the environment fingerprint of every run (:mod:`harness.env`).
The Docker side, building and running the image, is :mod:`harness.container`'s.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness import __version__, jsonio

IMAGE_JSON = Path("/etc/transfer-bench/image.json")
IMAGE_KIND = "transfer-bench.image"
IMAGE_SCHEMA = 1
IMAGE = jsonio.Record(IMAGE_KIND, IMAGE_SCHEMA)


def installed_distributions() -> dict[str, str]:
    """``{normalized name: version}`` of every distribution importlib.metadata can see."""
    out: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata.get("Name")
        if name:
            out[name.lower().replace("_", "-").replace(".", "-")] = dist.version
    return dict(sorted(out.items()))


def pip_freeze() -> list[str]:
    """``name==version`` of every installed distribution, sorted: the image's exact package
    set (read from the package metadata, so it works in venvs made without pip, e.g. by uv)."""
    return [f"{name}=={version}" for name, version in installed_distributions().items()]


def write_image_provenance(
    path: Path = IMAGE_JSON, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Write the build half of the image's provenance (run at build time, in the image).

    Build args come from ``BENCH_BUILD_*`` variables (set by the Dockerfile's last step).
    """
    env = os.environ if environ is None else environ
    build_args = {
        name: env.get(f"BENCH_BUILD_{name}") or None
        for name in ("BASE_IMAGE", "BASE_IMAGE_ID", "TF_EXTRA", "GIT_COMMIT")
    }
    freeze = pip_freeze()
    record = {
        "harness_version": __version__,
        "base_image": build_args["BASE_IMAGE"],
        "base_image_id": build_args["BASE_IMAGE_ID"],
        "tf_extra": build_args["TF_EXTRA"],
        "git_commit": build_args["GIT_COMMIT"],
        "python": platform.python_version(),
        "pip_freeze": freeze,
        "pip_freeze_sha256": hashlib.sha256(("\n".join(freeze) + "\n").encode()).hexdigest(),
    }
    IMAGE.write(path, record)
    Path(path).chmod(0o644)  # written as root at build time, read by whichever uid runs
    return record


def read_image_provenance(path: Path = IMAGE_JSON) -> dict[str, Any] | None:
    """The build provenance baked into this image, or None outside a transfer-bench image."""
    if not Path(path).is_file():
        return None
    return IMAGE.read(path)


def container_fingerprint(
    environ: Mapping[str, str] | None = None, path: Path = IMAGE_JSON
) -> dict[str, Any] | None:
    """``{"image_id", "image_digest", "build"}`` for the environment fingerprint, or None.

    None outside a transfer-bench image (no image.json), even when ``BENCH_IMAGE_ID`` is
    exported on the host for compose: the host is not the image. ``build`` is the baked
    provenance without the full package list (its digest stays).
    """
    env = os.environ if environ is None else environ
    build = read_image_provenance(path)
    if build is None:
        return None
    build = {k: v for k, v in build.items() if k not in ("pip_freeze", "kind", "schema")}
    return {
        "image_id": env.get("BENCH_IMAGE_ID") or None,
        "image_digest": env.get("BENCH_IMAGE_DIGEST") or None,
        "build": build,
    }
