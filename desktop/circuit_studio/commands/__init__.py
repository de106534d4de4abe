"""Sub-commands of the `circuit-studio` command line.

Each module has `add_parser(subparsers)` (registering its arguments, with `set_defaults(run=...)`
done by the caller) and `run(args, progress, cancel) -> exit status`.
"""
