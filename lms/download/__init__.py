"""Bringing models into the models folder: downloads over HTTP(S) and imports of local files.

Daemon side only (the CLI reaches it through the control socket). :mod:`.outbound` holds THE
outbound rule (README: Settings) that every connection made for a client follows.
"""
