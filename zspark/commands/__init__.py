"""One module per `zcmd` subcommand. Each has `add_arguments(parser)` and `run(args, config)`,
returning the exit code; `zspark.cli` finds them through COMMANDS."""
COMMANDS = ("serve", "validate", "tail", "replay", "keygen")
