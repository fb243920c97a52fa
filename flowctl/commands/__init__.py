"""One module per ``flowctl`` subcommand; each defines ``register(subparsers)``."""
