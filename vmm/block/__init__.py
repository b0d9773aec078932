"""The block layer: images behind the BlockBackend interface (raw files now), and
the I/O engine that runs their blocking calls away from vCPU threads."""
