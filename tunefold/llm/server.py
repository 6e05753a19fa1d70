"""The embedded OpenAI-compatible server (tunefold.llm.batch_server) on 127.0.0.1 and a free port, with a GGUF.

The child runs in its own process group and is asked by the kernel to exit when its parent dies
(PR_SET_PDEATHSIG), so neither Ctrl-C, an exception nor a SIGKILL of the pipeline leaves it running.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import hashlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from tunefold.config import EmbeddedServerConfig
from tunefold.cores import briefly_spinning, usable_cores
from tunefold.errors import TunefoldError
from tunefold.llm.engine import rows_independent
from tunefold.llm.widen import file_type, widen_to, widened
from tunefold.ports import free_port
from tunefold.train.models import EMBEDDED, embedded_gguf

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError):  # not Linux: the atexit hook and context managers still stop it
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def gguf_path(cfg: EmbeddedServerConfig) -> Path:
    if cfg.model == EMBEDDED:
        return embedded_gguf()
    path = Path(cfg.model)
    if not path.is_file():
        raise TunefoldError(f"llm.embedded.model: GGUF file {path} does not exist")
    return path


def served_alias(gguf: Path, dtype: str | None) -> str:
    """The model id clients name: the file's stem, and the 16-bit type it is served in when widened."""
    return gguf.stem.lower() + (f"-{dtype}" if dtype else "")


def embedded_alias(cfg: EmbeddedServerConfig) -> str:
    """The alias a server for `cfg` will have, without starting one."""
    gguf = gguf_path(cfg)
    return served_alias(gguf, widen_to(gguf, cfg.compute))


def file_fingerprint(path: Path) -> str:
    """Content hash of the GGUF, so cached replies never outlive a change of weights behind the same alias."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


class EmbeddedServer:
    """One llama.cpp server process; `start()` waits until it answers, `stop()` ends its whole process group."""

    def __init__(self, cfg: EmbeddedServerConfig) -> None:
        self.cfg = cfg
        self.source = self.gguf = gguf_path(cfg)
        self.dtype = widen_to(self.source, cfg.compute)
        self.alias = served_alias(self.source, self.dtype)
        source = file_fingerprint(self.source)
        self.weights = f"{source}-{self.dtype}" if self.dtype else source  # the numbers served
        self.fingerprint = self.weights
        if self.dtype or not rows_independent(file_type(self.source)):
            self.fingerprint += f"-w{cfg.slots}"  # its steps are as wide as its slots: the width shapes a reply
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: Path | None = None
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> EmbeddedServer:
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                return self
            if self.dtype:
                self.gguf = widened(self.source, self.dtype, self.weights)
            self.port = free_port()
            cmd = [sys.executable, "-m", "tunefold.llm.batch_server", "--model", str(self.gguf), "--alias", self.alias]
            cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--n-ctx", str(self.cfg.n_ctx)]
            cmd += ["--slots", str(self.cfg.slots), "--threads", str(self.cfg.n_threads or usable_cores())]
            fd, name = tempfile.mkstemp(prefix="tunefold-llama-", suffix=".log")
            self._log_file = Path(name)
            log.info(
                "starting the embedded server (%s, %d slots) on 127.0.0.1:%d", self.gguf.name, self.cfg.slots, self.port
            )
            self.proc = subprocess.Popen(
                cmd,
                stdout=fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                env=briefly_spinning(),
            )
            os.close(fd)
            atexit.register(self.stop)
            self._wait_ready()
            return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.cfg.startup_timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                tail = self._log_tail()
                self.stop()
                raise TunefoldError(f"embedded server exited while starting:\n{tail}")
            try:
                if httpx.get(f"{self.base_url}/models", timeout=2).status_code == 200:
                    log.info("embedded server ready at %s", self.base_url)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        tail = self._log_tail()
        self.stop()
        raise TunefoldError(f"embedded server not ready after {self.cfg.startup_timeout:.0f}s:\n{tail}")

    def _log_tail(self, n: int = 20) -> str:
        if self._log_file and self._log_file.exists():
            return "\n".join(self._log_file.read_text(errors="replace").splitlines()[-n:])
        return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
            log.info("embedded server on port %d stopped", self.port)
        if self._log_file:
            self._log_file.unlink(missing_ok=True)
            self._log_file = None
        atexit.unregister(self.stop)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None
