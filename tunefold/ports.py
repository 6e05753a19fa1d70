"""A free loopback port, for the local servers the pipeline starts (llama.cpp, torch's rendezvous)."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port the kernel just handed out on 127.0.0.1; the caller binds it at once (a tiny race, no better API)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
