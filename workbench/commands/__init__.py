"""One module per ``workbench`` subcommand: ``HELP``, ``add_arguments(parser)``, ``run(args) -> int``."""
