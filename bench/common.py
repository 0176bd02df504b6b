"""Shared pieces of the benchmarks: the test server in its own process, the machine's
description, and a runner for one delib debate measured in-process."""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_rss_mib() -> float:
    """This process's peak resident memory so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


@contextmanager
def fake_server(delay: float = 0.0, chunk_delay: float = 0.0, models: tuple[str, ...] = ()):
    """The scripted OpenAI server in a separate process, so its CPU is not delib's."""
    args = [sys.executable, "-m", "delib.testing", "--port", "0", "--delay", str(delay),
            "--chunk-delay", str(chunk_delay)]  # fmt: skip
    for model in models:
        args += ["--model", model]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        match = re.search(r"(http://\S+)", line)
        if not match:
            raise RuntimeError(f"test server did not start: {line!r}")
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def in_fresh_process(module: str, *args: object) -> dict:
    """Run ``python -m module args…`` (a measurement that must not inherit this process's
    memory or state) and read the JSON it prints."""
    out = subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    return json.loads(out)


def server_requests(base_url: str, clear: bool = False) -> list[dict]:
    root = base_url.rsplit("/v1", 1)[0]
    url = f"{root}/_fake/requests{'?clear' if clear else ''}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())["requests"]


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    versions = {}
    for package in ("delib", "langgraph", "openai", "llama-cpp-python"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "cpu": f"{cpu}, {os.cpu_count()} logical CPUs",
        "memory": memory,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        **versions,
    }


def temp_archive() -> Path:
    return Path(tempfile.mkdtemp(prefix="delib-bench-"))


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


class Stopwatch:
    def __enter__(self) -> Stopwatch:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu
