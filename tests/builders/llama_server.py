"""A real llama.cpp llama-server on 127.0.0.1, serving the embedded GGUF: for the tests and benchmarks that need one.

The binary is built by scripts/build_llama_server.sh into the curate cache (`CURATE_LLAMA_SERVER`
names another); `LlamaServer` starts it on a free port and stops it as a context manager.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import httpx

from curation.backends.local import embedded_model_location


def llama_server_binary() -> Path:
    if os.environ.get("CURATE_LLAMA_SERVER"):
        return Path(os.environ["CURATE_LLAMA_SERVER"])
    cache = Path(os.environ.get("CURATE_CACHE", Path.home() / ".cache" / "curate"))
    return cache / "llama-server" / "bin" / "llama-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """llama-server on 127.0.0.1 with `slots` parallel slots; a context manager.

    One thread by default: llama.cpp's threads spin-wait for each other, and on a 2-core machine
    shared with the client (and with other jobs) `-t 2` measured 12x slower than `-t 1`.
    """

    def __init__(self, binary: Path, log_path: Path, slots: int = 8, threads: int = 1, extra_args: tuple[str, ...] = ()):
        self.binary, self.log_path, self.slots, self.threads, self.extra_args = binary, log_path, slots, threads, extra_args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "LlamaServer":
        folder, gguf = embedded_model_location()
        command = [
            str(self.binary), "-m", os.path.join(folder, gguf), "--host", "127.0.0.1", "--port", str(self.port),
            "-np", str(self.slots), "-t", str(self.threads), "-tb", str(self.threads), "--no-webui", *self.extra_args,
        ]
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.process.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        self.__exit__()
        raise RuntimeError("llama-server did not become healthy in 180 s")

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()
