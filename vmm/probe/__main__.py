"""python -m vmm.probe --path: print where the probe guest ELF is installed."""

import sys

from vmm.probe import elf_path

if len(sys.argv) == 2 and sys.argv[1] == "--path":
    try:
        print(elf_path())
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        sys.exit(1)
else:
    print("usage: python -m vmm.probe --path", file=sys.stderr)
    sys.exit(2)
