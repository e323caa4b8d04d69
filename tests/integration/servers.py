"""Real servers for integration tests: `dagster dev`, a PostgreSQL cluster. Started and stopped by the tests."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_instance_yaml(home: Path) -> Path:
    """The repo's dagster.yaml with every base_dir moved under `home` (tests never touch .dagster/)."""
    from gtp_pipeline.instance import write_instance_yaml

    return write_instance_yaml(home)


class DagsterDev:
    """`dagster dev` on 127.0.0.1 with its own DAGSTER_HOME and the tiny profile."""

    def __init__(self, tmp: Path, env: dict[str, str] | None = None, artifact_root: Path | None = None):
        """A fresh instance in tmp/dagster_home, or, given `artifact_root`, the instance in its dagster_home/ (the
        tiny_pipeline fixture's, whose materializations the UI then shows)."""
        self.home = (artifact_root or tmp) / "dagster_home"
        self.port = free_port()
        local_instance_yaml(self.home)
        self.env = {
            **os.environ,
            "DAGSTER_HOME": str(self.home),
            "GTP_PROFILE": "tiny",
            "GTP_ARTIFACT_ROOT": str(artifact_root or tmp / "artifacts"),
            **(env or {}),
        }
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(tmp / "dagster_dev.log", "w")  # noqa: SIM115 - closed in stop()
        dagster = Path(sys.executable).with_name("dagster")
        self.proc = subprocess.Popen(
            [str(dagster), "dev", "-w", str(REPO / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(self.port)],
            cwd=REPO,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() also ends the daemon and code server
        )

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {self.proc.returncode}; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"{self.url}/server_info", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(1)
        raise TimeoutError(f"dagster dev did not answer on {self.url} within {timeout}s; see {self.log.name}")

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            payload = json.loads(resp.read())
        if payload.get("errors"):
            raise RuntimeError(f"GraphQL errors: {payload['errors']}")
        return payload["data"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def postgres_bin() -> Path | None:
    """The folder of Debian's PostgreSQL server binaries, if installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent if found else None


class Postgres:
    """A throwaway PostgreSQL cluster on 127.0.0.1 in a temp folder (run as `postgres` when we are root)."""

    def __init__(self):
        self.bin, self.port = postgres_bin(), free_port()
        # Directly under /tmp: pytest's own tmp folders are private to root, and the server runs as postgres.
        self.root = Path(tempfile.mkdtemp(prefix="gtp-pg-"))
        self.data = self.root / "pgdata"
        self.data.mkdir()
        self.as_root = os.geteuid() == 0
        if self.as_root:  # initdb refuses to run as root
            shutil.chown(self.root, "postgres")
            shutil.chown(self.data, "postgres")
        self._run(["initdb", "-D", str(self.data), "-U", "dagster", "--auth=trust", "-E", "UTF8"])
        self._run(
            [
                "pg_ctl",
                "-D",
                str(self.data),
                "-l",
                str(self.data / "server.log"),
                "-w",
                "start",
                "-o",
                f"-p {self.port} -h 127.0.0.1 -k {self.data}",
            ]
        )
        self._run(["createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "dagster", "dagster"])

    def _run(self, cmd: list[str]) -> None:
        cmd = [str(self.bin / cmd[0]), *cmd[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr or done.stdout}")

    def env(self) -> dict[str, str]:
        return {
            "DAGSTER_PG_USERNAME": "dagster",
            "DAGSTER_PG_PASSWORD": "unused-trust-auth",
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_DB": "dagster",
        }

    def stop(self) -> None:
        try:
            self._run(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"])
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
