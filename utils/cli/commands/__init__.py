"""Sub-commands of the `unlearn` CLI, one module each (see utils.cli.main)."""
