from shell.cli import entry_point

entry_point()
