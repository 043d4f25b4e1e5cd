"""One module per ``bench`` subcommand group; each exposes ``register(subparsers)``."""
