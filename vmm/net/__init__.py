"""Host network back ends (tap, ...) and the clients table `info network` shows."""
