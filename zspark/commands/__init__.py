"""One module per `zcmd` subcommand. Each has `add_arguments(parser)` and `run(args, config)`,
returning the exit code; `zspark.cli` finds them through COMMANDS. `running` is a helper they
share (how to reach the running server), not a command."""
COMMANDS = ("serve", "validate", "tail", "replay", "shell", "status", "check", "rotate", "keygen")
