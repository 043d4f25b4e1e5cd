"""``bench pretrain NAME``: train the weights that manifest entry NAME describes.

NAME is a weights entry whose ``pretrained_on`` dataset is prepared on demand (synthetic
sources) and whose ``architecture`` (MobileNetV2, alpha, input size, no top) is built;
the backbone's weights go to the entry's file path unless ``--out`` says otherwise.
The command prints the new file's sha256 and size and what to pin in the manifest.
"""

from __future__ import annotations

import argparse

from harness import outputs
from harness.datasets.weights import weights_path
from harness.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain a backbone on a synthetic source (the shipped smoke weights)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", metavar="NAME", help="weights entry in data/manifest.json")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: 40)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: 64)")
    p.add_argument(
        "--learning-rate", type=float, default=None, help="peak of the cosine decay (default: 1e-3)"
    )
    p.add_argument(
        "--bn-momentum",
        type=float,
        default=None,
        help="BatchNorm moving-statistics momentum (default: 0.9)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--limit", type=int, default=None, help="use the first N images of each split only"
    )
    p.add_argument(
        "--out",
        type=outputs.option(outputs.WEIGHTS, "--out"),
        default=None,
        help="where to write *.weights.h5 (new, or earlier weights: replaced)",
    )
    p.add_argument(
        "--eager",
        action="store_true",
        help="run Keras eagerly (no graph tracing: slower steps, quicker tiny runs)",
    )
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from harness.manifest import FileSource, load_manifest
    from harness.pretrain import PretrainConfig, pretrain, sidecar_path

    entry = load_manifest().weight(args.name)
    arch = entry.architecture
    if arch.get("model") != "mobilenet_v2" or arch.get("include_top", False):
        raise InputError(
            f"weights {args.name!r}: `bench pretrain` trains headless mobilenet_v2 backbones, "
            f"the entry's architecture is {arch!r}"
        )
    out = args.out
    if out is None:
        if not isinstance(entry.source, FileSource):
            raise InputError(
                f"weights {args.name!r} is not a file in the repository (source "
                f"{type(entry.source).__name__}): pass --out PATH"
            )
        out = weights_path(entry)
    given = (
        ("epochs", args.epochs),
        ("batch_size", args.batch_size),
        ("learning_rate", args.learning_rate),
        ("bn_momentum", args.bn_momentum),
    )
    overrides = {k: v for k, v in given if v is not None}
    outputs.claim(sidecar_path(out), outputs.PRETRAIN_SIDECAR, option="--out (its sidecar)")
    config = PretrainConfig(
        dataset=entry.pretrained_on,
        image_size=int(arch["input_size"]),
        alpha=float(arch["alpha"]),
        seed=args.seed,
        limit=args.limit,
        run_eagerly=args.eager,
        **overrides,
    )
    result = pretrain(config, out, verbose=0 if args.quiet else 2)
    test = "n/a" if result.test_accuracy is None else f"{result.test_accuracy:.4f}"
    print(
        f"trained {args.name} on {config.dataset} in {result.seconds:.0f} s: accuracy "
        f"train {result.train_accuracy:.4f}, val {result.val_accuracy:.4f}, test {test}"
    )
    print(f"wrote {result.weights} ({result.size} bytes) and {result.sidecar}")
    print(f"sha256 {result.sha256}")
    home = weights_path(entry)
    copy = "" if out.resolve() == home.resolve() else f"copy it to {home}, then "
    print(f"to pin: {copy}run `bench data pin {args.name}`")
    return 0
