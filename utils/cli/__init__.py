"""The `unlearn` command (`main`, one module per sub-command in `commands/`) and the notebook executor."""
