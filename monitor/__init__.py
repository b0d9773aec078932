"""The monitor's command layer: typed QMP commands, events, and the HMP table."""
