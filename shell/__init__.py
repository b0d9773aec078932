"""kvmkit-shell: an interactive QMP/HMP client."""
