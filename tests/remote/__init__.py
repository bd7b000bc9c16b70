"""Upstream servers for the remote-engine tests (see upstreams.py) and their self-tests."""
