"""The QMP wire protocol: sockets, sessions, the JSON stream parser."""
