from vmm.cli import entry_point

entry_point()
