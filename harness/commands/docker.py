"""``bench docker build|run|info``: the harness in its container (see harness/container.py).

``bench docker run -- ARGS`` runs ``bench ARGS`` in the image with no network, the host's
data/ (read-only, except prepared/ and archives/ for ``data prepare``) and reports/
mounted, GPUs when asked for (``--gpus``) or available, as the calling user (never root
unless ``--user 0:0``), without capabilities, on a read-only root; its exit code is the
container's. Inside the image, ``bench docker info`` shows the baked build
provenance.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from harness import container, provenance
from harness.commands import options
from harness.errors import InputError


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "docker",
        help="build the container image and run bench in it",
        description="Build the transfer-bench image and run bench inside it (Docker SDK).",
    )
    dsub = parser.add_subparsers(dest="docker_command", metavar="ACTION")
    dsub.required = True

    build = dsub.add_parser(
        "build",
        help="build the image (classic builder, host network for pip)",
        description="Build transfer-bench:<tf> from the Dockerfile in the project root.",
    )
    build.add_argument(
        "--tf",
        choices=container.TF_CHOICES,
        default=container.DEFAULT_TF,
        help="TensorFlow flavour: cpu = tensorflow-cpu, cuda = tensorflow[and-cuda] "
        "(default %(default)s)",
    )
    build.add_argument(
        "--base",
        default=container.DEFAULT_BASE_IMAGE,
        metavar="IMAGE",
        help="base image with python3 + venv (default %(default)s, built by "
        "scripts/docker-setup.sh)",
    )
    build.add_argument("--tag", help="image tag (default transfer-bench:<tf>)")
    build.add_argument("--no-cache", action="store_true", help="rebuild every layer")
    build.add_argument("--quiet", "-q", action="store_true", help="do not echo the build log")
    build.set_defaults(func=_build)

    run = dsub.add_parser(
        "run",
        help="run `bench ARGS` in the container: bench docker run [--gpus] -- ARGS",
        description="Run `bench ARGS` in the image with no network, data/ mounted read-only "
        "(bench data prepare: its prepared/ and archives/ writable) and reports/ writable, "
        "no capabilities, no new privileges and a read-only root file system (tmpfs for /tmp "
        "and $HOME); exits with the container's exit code.",
    )
    run.add_argument(
        "--gpus",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="hand all GPUs to the container (default: when the engine can)",
    )
    run.add_argument(
        "--tf",
        choices=container.TF_CHOICES,
        default=container.DEFAULT_TF,
        help="which image: transfer-bench:<tf> (default %(default)s)",
    )
    run.add_argument("--image", help="image to run (overrides --tf)")
    run.add_argument(
        "--data", type=Path, metavar="DIR", help="host data folder (default <root>/data)"
    )
    run.add_argument(
        "--reports", type=Path, metavar="DIR", help="host reports folder (default <root>/reports)"
    )
    run.add_argument(
        "--user",
        metavar="UID[:GID]",
        help="run as this user (default: the caller; when that is root, $SUDO_UID or the "
        "owner of the reports folder; never root unless --user 0:0)",
    )
    run.add_argument("args", nargs=argparse.REMAINDER, help="arguments for bench (after --)")
    run.set_defaults(func=_run)

    info = dsub.add_parser(
        "info",
        help="engine, GPUs and images (on the host); build provenance (in the image)",
    )
    options.json(info, "print JSON")
    info.set_defaults(func=_info)


def _build(args: argparse.Namespace) -> int:
    config = container.BuildConfig(
        tf=args.tf, base_image=args.base, tag=args.tag, nocache=args.no_cache
    )
    log = None if args.quiet else lambda line: print(line, flush=True)
    built = container.build_image(config, log=log)
    print(
        f"built {built.tag} {built.image_id} ({built.size / 1e6:.0f} MB) "
        f"in {built.seconds:.0f} s from {config.base_image}"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    bench_args = list(args.args)
    if bench_args[:1] == ["--"]:
        bench_args = bench_args[1:]
    if not bench_args:
        raise InputError("bench docker run: no bench arguments; e.g. bench docker run -- all")
    config = container.RunConfig(
        image=args.image or container.default_tag(args.tf),
        gpus=args.gpus,
        data_dir=args.data,
        reports_dir=args.reports,
        user=_user(args.user),
    )
    return container.run_in_container(bench_args, config)


def _user(value: str | None) -> str | None:
    """``--user``: a numeric ``UID`` or ``UID:GID`` (names need the image's passwd)."""
    if value is None:
        return None
    uid, _, gid = value.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        raise InputError(f"--user {value!r}: expected UID or UID:GID, numbers (e.g. 1000:1000)")
    return f"{uid}:{gid or uid}"


def _info(args: argparse.Namespace) -> int:
    inside = provenance.container_fingerprint()
    if inside is not None:
        report: dict[str, Any] = {"where": "container", **inside}
    else:
        client = container.connect()
        version = client.version()
        images = []
        for image in client.images.list(name=container.IMAGE_REPOSITORY):
            labels = image.labels or {}
            images.append(
                {
                    "tags": image.tags,
                    "id": image.id,
                    "size_mb": round(int(image.attrs.get("Size", 0)) / 1e6),
                    "created": image.attrs.get("Created"),
                    "tf": labels.get("io.transfer-bench.tf"),
                    "revision": labels.get("org.opencontainers.image.revision"),
                }
            )
        report = {
            "where": "host",
            "engine": version.get("Version"),
            "api": version.get("ApiVersion"),
            "gpus_available": container.gpus_available(client),
            "images": images,
        }
    if args.json:
        json.dump(report, sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
        return 0
    for key, value in report.items():
        if key == "images":
            print("images:")
            for image in value or [{"tags": ["(none; bench docker build)"]}]:
                tags = ", ".join(image["tags"]) or "<untagged>"
                extra = (
                    f" {image['id'][:19]} {image['size_mb']} MB tf={image['tf']} "
                    f"rev={(image['revision'] or '-')[:12]}"
                    if "id" in image
                    else ""
                )
                print(f"  {tags}{extra}")
        elif isinstance(value, dict):
            print(f"{key}:")
            for sub_key, sub_value in value.items():
                print(f"  {sub_key}: {sub_value}")
        else:
            print(f"{key}: {value}")
    return 0
