"""``bench data list|fetch|prepare|verify|pin|add``: the checksummed inputs of every benchmark.

``fetch`` and ``prepare`` take dataset and weights names, or ``--profile P`` for everything
a matrix needs; ``add`` turns a folder or archive of images into a pinned manifest entry.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tabulate import tabulate

from harness.commands import options
from harness.datasets import archives, cache
from harness.errors import InputError, IntegrityError
from harness.manifest import (
    DerivedSource,
    FileSource,
    HttpsSource,
    LocalSource,
    SyntheticSource,
    WeightsEntry,
    load_manifest,
)

DEFAULT_IMAGE_SIZE = 224


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="list, fetch, prepare, verify and pin datasets and weights")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True
    p = dsub.add_parser("list", help="every dataset and weights entry with its status")
    options.json(p, "print a JSON array instead of a table")
    p.set_defaults(func=cmd_list)
    _register_fetch(dsub)
    _register_prepare(dsub)
    p = dsub.add_parser("verify", help="re-hash archives, weights and prepared caches")
    p.add_argument("names", nargs="*", metavar="NAME", help="default: everything present")
    p.add_argument("--allow-unpinned", action="store_true", help="do not fail on unpinned files")
    p.set_defaults(func=cmd_verify)
    p = dsub.add_parser("pin", help="record the sha256 of what was fetched (or prepared)")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--image-size", type=int, metavar="N", help="also pin this prepared cache")
    p.set_defaults(func=cmd_pin)
    _register_add(dsub)


def _profile_args(p: argparse.ArgumentParser, what: str) -> None:
    options.profile(
        p,
        help=f"{what} everything matrix P (a name in benchmarks/ or a .toml path) needs",
        metavar="P",
    )
    p.add_argument(
        "--skip-unavailable",
        action="store_true",
        help="with --profile: skip (and name) datasets whose local archive is not here",
    )


def _register_fetch(dsub: argparse._SubParsersAction) -> None:
    p = dsub.add_parser("fetch", help="download (or copy --from) and verify, then extract safely")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument(
        "--from",
        dest="from_path",
        type=Path,
        metavar="PATH",
        help="a local archive, or a folder (packed into a reproducible tar)",
    )
    p.add_argument("--allow-unpinned", action="store_true", help="accept a file with no hash")
    _profile_args(p, "fetch")
    p.set_defaults(func=cmd_fetch)


def _register_prepare(dsub: argparse._SubParsersAction) -> None:
    p = dsub.add_parser("prepare", help="decode and resize once into the uint8 cache")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument(
        "--image-size",
        type=int,
        action="append",
        metavar="N",
        help=f"square side in pixels (repeatable; default {DEFAULT_IMAGE_SIZE}; with "
        "--profile: the sizes its cells use)",
    )
    _profile_args(p, "prepare")
    p.add_argument("--workers", type=int, default=None, help="decode processes (default: cores)")
    p.add_argument(
        "--skip-corrupt",
        action="store_true",
        help="skip undecodable files (counted in meta.json) instead of failing",
    )
    p.add_argument("--allow-unpinned", action="store_true", help="accept an unpinned archive")
    p.set_defaults(func=cmd_prepare)


def _register_add(dsub: argparse._SubParsersAction) -> None:
    p = dsub.add_parser(
        "add",
        help="add your own dataset: inspect a folder, archive or URL; write a pinned entry",
        description="Inspect a folder, a tar/zip archive or an https URL of one (split "
        "folders train/val/test, or class folders only), infer its classes and split "
        "counts, hash it, and write a pinned, validated entry into the manifest.",
    )
    p.add_argument("name", metavar="NAME", help="the dataset's name in the manifest")
    p.add_argument(
        "--from", dest="source", required=True, metavar="PATH|URL", help="folder, archive or URL"
    )
    p.add_argument(
        "--layout",
        default="image-folders",
        help="how the images are arranged (image-folders: split/class/image)",
    )
    p.add_argument(
        "--val-from-train",
        metavar="X",
        default=None,
        help="no val folder: carve val out of train, per class, seeded: a fraction (0.1) or "
        "a count (5)",
    )
    p.add_argument(
        "--regime",
        metavar="data=small|big,domain=similar|different",
        default=None,
        help="the transfer regime this dataset stands for (else derived, and marked so)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing entry of that name")
    p.set_defaults(func=cmd_add)


def cmd_list(args: argparse.Namespace) -> int:
    from harness.datasets.status import all_statuses

    rows = all_statuses(load_manifest())
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
        return 0
    table = [
        (r.name, r.kind, r.source, r.status, ",".join(map(str, r.prepared)) or "-") for r in rows
    ]
    print(tabulate(table, headers=("name", "kind", "source", "status", "prepared px")))
    return 0


def _fetch_one(name: str, from_path: Path | None, allow_unpinned: bool) -> str:
    manifest = load_manifest()
    entry = manifest.entry(name)
    source = entry.source
    if isinstance(source, SyntheticSource):
        return f"{name}: synthetic, nothing to fetch (generated by `bench data prepare {name}`)"
    if isinstance(source, DerivedSource):
        parent = _fetch_one(source.parent, from_path, allow_unpinned)
        return f"{name}: derived from {source.parent!r}; {parent}"
    if isinstance(source, FileSource):
        assert isinstance(entry, WeightsEntry)
        from harness.datasets.weights import resolve_weights

        path = resolve_weights(name, allow_unpinned=allow_unpinned)
        return f"{name}: shipped in the repository, verified ({path})"
    assert isinstance(source, HttpsSource | LocalSource)
    if isinstance(entry, WeightsEntry):
        dest, got = archives.fetch_file(entry, from_path=from_path, allow_unpinned=allow_unpinned)
        extracted, ignored = None, ()
    else:
        done = archives.fetch_dataset(entry, from_path=from_path, allow_unpinned=allow_unpinned)
        dest, got, extracted = done.path, done.digest, done.extracted
        ignored = done.ignored
    note = f"fetched {dest}" if got else f"already fetched {dest}"
    if got and not source.pinned:
        note += f" (unpinned: sha256 {got.sha256}; record it with `bench data pin {name}`)"
    elif got and not source.sha256:
        note += f" (md5 verified; record its sha256 {got.sha256} with `bench data pin {name}`)"
    if extracted is not None:
        note += f", extracted to {extracted}"
    if ignored:
        note += f"; {ignored_line(ignored)}"
    return f"{name}: {note}"


def ignored_line(names: tuple[str, ...] | list[str]) -> str:
    """One line saying how many platform metadata files were left out, with an example."""
    from harness.datasets.platform_meta import DESCRIPTION

    n = len(names)
    return (
        f"ignored {n} platform metadata file{'' if n == 1 else 's'} ({DESCRIPTION}; e.g. "
        f"{names[0]!r}): not data"
    )


def _profile_needs(profile: str) -> Any:
    from harness.matrix import load_matrix
    from harness.run.preflight import profile_needs

    return profile_needs(load_matrix(profile).cells)


def _missing_local(name: str, manifest: Any) -> str | None:
    """Why dataset ``name`` cannot be fetched here (a local archive not supplied), if so."""
    from harness.run.preflight import root_of

    root = root_of(manifest.dataset(name), manifest)
    source = root.source
    if isinstance(source, LocalSource) and archives.fetch_state(root) is None:
        return (
            f"{name}: needs the local archive of {root.name!r}: run `bench data fetch "
            f"{root.name} --from PATH/{source.filename}`"
        )
    return None


def cmd_fetch(args: argparse.Namespace) -> int:
    if args.from_path is not None and len(args.names) != 1:
        raise InputError(f"--from takes one NAME, got {len(args.names)}: {' '.join(args.names)}")
    if not args.names and not args.profile:
        raise InputError("bench data fetch: give dataset or weights NAMEs, or --profile P")
    names = list(args.names)
    missing: list[str] = []
    if args.profile:
        manifest = load_manifest()
        needs = _profile_needs(args.profile)
        for name in [*sorted(needs.datasets), *sorted(needs.weights)]:
            manifest.entry(name)
            why = _missing_local(name, manifest) if name in manifest.datasets else None
            if why:
                missing.append(why)
            elif name not in names:
                names.append(name)
    for name in names:
        print(_fetch_one(name, args.from_path, args.allow_unpinned))
    return _report_missing(missing, args.skip_unavailable)


def _report_missing(missing: list[str], skip: bool) -> int:
    for why in missing:
        print(f"skipped {why}" if skip else f"missing {why}")
    if missing and not skip:
        more = f" (and {len(missing) - 1} more above)" if len(missing) > 1 else ""
        raise InputError(f"{missing[0]}{more}; or pass --skip-unavailable")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from harness.datasets.prepare import prepare

    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers must be >= 1, got {args.workers}")
    if not args.names and not args.profile:
        raise InputError("bench data prepare: give dataset NAMEs, or --profile P")
    manifest = load_manifest()
    jobs: list[tuple[str, int]] = []
    for name in args.names:
        manifest.dataset(name)
        jobs += [(name, size) for size in args.image_size or [DEFAULT_IMAGE_SIZE]]
    missing: list[str] = []
    if args.profile:
        if args.image_size:
            raise InputError("--image-size and --profile: the profile's cells give the sizes")
        for name, sizes in sorted(_profile_needs(args.profile).datasets.items()):
            manifest.dataset(name)
            why = _missing_local(name, manifest)
            if why:
                missing.append(why)
            else:
                jobs += [(name, size) for size in sorted(sizes) if (name, size) not in jobs]
    for name, size in jobs:
        folder = prepare(
            name,
            size,
            workers=args.workers,
            skip_corrupt=args.skip_corrupt,
            allow_unpinned=args.allow_unpinned,
        )
        meta = cache.read_meta(folder)
        counts = ", ".join(f"{s} {n}" for s, n in meta["splits"].items())
        skipped = meta.get("skipped_corrupt", 0)
        conv = meta.get("conversions") or {}
        converted = ", ".join(f"{k} {v}" for k, v in conv.items())
        print(
            f"{name}: prepared at {size} px in {folder} ({counts}; {meta['num_classes']} "
            f"classes; digest {meta['digest']}"
            f"{f'; skipped {skipped} corrupt' if skipped else ''}"
            f"{f'; converted: {converted}' if converted else ''})"
        )
    return _report_missing(missing, args.skip_unavailable)


def cmd_verify(args: argparse.Namespace) -> int:
    from harness.datasets.verify import verify

    checks = verify(load_manifest(), args.names or None, allow_unpinned=args.allow_unpinned)
    for c in checks:
        print(f"{'ok' if c.ok else 'FAILED':<7} {c.name:<24} {c.what:<28} {c.detail}")
    failed = [c for c in checks if not c.ok]
    if failed:
        more = f" (and {len(failed) - 1} more above)" if len(failed) > 1 else ""
        raise IntegrityError(f"verify: {failed[0].name} {failed[0].what}: {failed[0].detail}{more}")
    if not checks:
        print("nothing fetched or prepared yet: see `bench data list`")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from harness.analysis.findings import SMALL_TRAIN_IMAGES
    from harness.datasets.add import add_dataset, parse_regime, parse_val_from_train

    added = add_dataset(
        args.name,
        args.source,
        layout=args.layout,
        val_from_train=parse_val_from_train(args.val_from_train) if args.val_from_train else None,
        regime=parse_regime(args.regime) if args.regime else None,
        force=args.force,
        small_train_images=SMALL_TRAIN_IMAGES,
    )
    entry = added.entry
    regime = entry["regime"]
    how = "derived: " + regime["derived"] if "derived" in regime else "declared"
    print(
        f"added dataset {added.name!r} to {added.manifest}: {len(entry['classes'])} classes, "
        + ", ".join(f"{s} {n}" for s, n in entry["splits"].items())
        + f"; {entry['channels']} channel(s); sha256 {entry['source']['sha256']} "
        f"({added.archive}); regime {regime['data']} data, {regime['domain']} domain ({how})"
    )
    if added.ignored:
        print(ignored_line(added.ignored))
    print(
        f"next: bench data prepare {added.name} --image-size N, then name it in a profile's "
        f'[[cells]] datasets = ["{added.name}"] and run bench all --profile FILE.toml'
    )
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    from harness.datasets.pin import pin

    for keys, value in pin(args.name, args.image_size):
        print(f"pinned {'.'.join(keys)} = {json.dumps(value)}")
    return 0
