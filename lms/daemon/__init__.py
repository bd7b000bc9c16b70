"""The daemon process: lock, sockets, signals, logs (``python -m lms.daemon``)."""
