"""A real Prometheus server (Debian's package) for the tests, scraping given endpoints."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repo_manager.server import free_port


@dataclass(kw_only=True)
class Prometheus:
    """A Prometheus server on loopback, scraping ``targets`` (metrics URLs) every second."""

    binary: str
    workdir: Path
    targets: list[str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        config = self.workdir / "prometheus.yml"
        hosts = json.dumps([t.split("//")[-1].split("/")[0] for t in self.targets])
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"scrape_configs:\n  - job_name: stack\n    static_configs:\n"
            f"      - targets: {hosts}\n"
        )
        self.process = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / "prometheus.log").open("ab"),
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"{self.url}/api/v1/query?query=up", timeout=1
                ) as answer:
                    if b'"value"' in answer.read():
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("prometheus did not start")

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector (raw HTTP API, independent of the code tested)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(url, timeout=5) as answer:
            document = json.load(answer)
        assert document["status"] == "success", document
        return list(document["data"]["result"])

    def scrapes_after(self, moment: float, timeout: float = 30.0) -> None:
        """Wait until every target was scraped successfully after unix time ``moment``."""
        deadline = time.monotonic() + timeout
        while True:
            ups = self.query("up")
            times = self.query("timestamp(up)")
            if (
                len(ups) == len(self.targets)
                and all(float(u["value"][1]) == 1 for u in ups)
                and all(float(t["value"][1]) > moment for t in times)
            ):
                return
            assert time.monotonic() < deadline, f"not all scraped since {moment}: {ups} {times}"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=20)
        self.process = None
