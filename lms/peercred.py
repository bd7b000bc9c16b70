"""Who is at the other end of the control socket: the peer's uid (``SO_PEERCRED``).

Both ends check it: the daemon serves its owner only (:mod:`lms.api.control.app`) and the CLI talks
only to a daemon of its own user (:mod:`lms.client`). Standard library only.
"""

from __future__ import annotations

import socket
import struct


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a connected Unix socket (None if unknown).

    Linux reports ``struct ucred {pid, uid, gid}`` through ``SO_PEERCRED``.
    """
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)
