"""Real `hubbub serve` processes for tests that need more than one server or
signals: started with HUBBUB_* variables, port read from the JSON log line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.backends import ROOT


def settings_env(settings: Mapping[str, Any]) -> dict[str, str]:
    """HUBBUB_* variables for a dict of setting values."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}
    for name, value in settings.items():
        env["HUBBUB_" + name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


class ServerProcess:
    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)
        self.lines: list[str] = []
        self.port = 0
        self._listening = threading.Event()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server", "serve"],
            cwd=ROOT,
            env=settings_env({**self.settings, "port": self.settings.get("port", 0)}),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if '"listening"' in line:
                self.port = int(json.loads(line)["port"])
                self._listening.set()

    def wait_listening(self, timeout: float = 30) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.05):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start (exit {self.process.poll()}):\n{''.join(self.lines)}")
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 20) -> int:
        """Signal the process by PID and wait; kill it if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_servers(count: int, settings: Mapping[str, Any], data_dir: Path) -> list[ServerProcess]:
    servers = [ServerProcess({**settings, "data_dir": str(data_dir)}) for _ in range(count)]
    try:
        return [s.wait_listening() for s in servers]
    except BaseException:
        for s in servers:
            s.stop(signal.SIGKILL)
        raise
