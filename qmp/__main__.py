from qmp.cli import entry_point

entry_point()
