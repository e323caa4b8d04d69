"""Setup-time download of packaged data that pip cannot install: the BIG-bench task files.

BIG-bench 1.0.0 is an sdist whose requirements (tensorflow, t5, a BLEURT zip) cannot and must not be
installed, so we fetch the tarball from PyPI's file host, check its sha256, and extract only the
task.json files the pipeline reads into `<data_dir>/bigbench/<task>/task.json`. This runs from
`make setup`, never from an asset: at run time the pipeline only reads files.

    python -m gtp_pipeline.core.fetch            # idempotent; prints where the data is
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tarfile
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

BIGBENCH_URL = (
    "https://files.pythonhosted.org/packages/95/f8/c019b3579df548a04cac12342cfcb878e50ddf6cfcd7fddba8cfc721c157/"
    "bigbench-1.0.0.tar.gz"
)
BIGBENCH_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"

# The instruction pool plus every target task a profile can name (BBH source tasks, social_iqa, ...).
BIGBENCH_TASKS = (
    "natural_instructions",
    "social_iqa",
    "strategyqa",
    "disfl_qa",
    "causal_judgment",
    "date_understanding",
    "disambiguation_qa",
    "geometric_shapes",
    "logical_deduction",
    "movie_recommendation",
    "navigate",
    "object_counting",
    "penguins_in_a_table",
    "reasoning_about_colored_objects",
    "ruin_names",
    "snarks",
    "sports_understanding",
    "temporal_sequences",
    "tracking_shuffled_objects",
)
MANIFEST = "manifest.json"


class DataNotInstalledError(FileNotFoundError):
    """Packaged data the profile needs is not on this machine; the message says how to get it."""


def data_dir() -> Path:
    """Where setup puts downloaded data: $GTP_DATA_DIR, else `.data/` in the checkout."""
    env = os.environ.get("GTP_DATA_DIR")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[2] / ".data"


def bigbench_dir(root: Path | None = None) -> Path:
    """The folder holding the extracted BIG-bench task files; raises if setup has not run."""
    base = (root or data_dir()) / "bigbench"
    manifest = base / MANIFEST
    if not manifest.exists():
        raise DataNotInstalledError(
            f"BIG-bench task files are not in {base}. Run `make setup` "
            f"(or `python -m gtp_pipeline.core.fetch`) once; it downloads them from PyPI."
        )
    return base


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_bigbench(root: Path | None = None, tasks: tuple[str, ...] = BIGBENCH_TASKS) -> Path:
    """Download (once) and extract the wanted BIG-bench task files; return the extraction folder."""
    root = root or data_dir()
    out = root / "bigbench"
    manifest = out / MANIFEST
    if manifest.exists() and set(json.loads(manifest.read_text())["tasks"]) >= set(tasks):
        return out
    tarball = root / "downloads" / "bigbench-1.0.0.tar.gz"
    if not tarball.exists() or _sha256(tarball) != BIGBENCH_SHA256:
        tarball.parent.mkdir(parents=True, exist_ok=True)
        tmp = tarball.with_suffix(".part")
        log.info("downloading %s", BIGBENCH_URL)
        with urllib.request.urlopen(BIGBENCH_URL, timeout=600) as resp, open(tmp, "wb") as f:
            shutil.copyfileobj(resp, f, 1 << 20)
        found = _sha256(tmp)
        if found != BIGBENCH_SHA256:
            tmp.unlink()
            raise OSError(f"bigbench-1.0.0.tar.gz has sha256 {found}, expected {BIGBENCH_SHA256}")
        tmp.replace(tarball)
    staging = root / "bigbench.part"
    shutil.rmtree(staging, ignore_errors=True)
    wanted = set(tasks)
    n_files = 0
    with tarfile.open(tarball, "r|gz") as tf:  # stream: one pass over 358 MB, no random access needed
        for member in tf:
            parts = member.name.split("/")  # bigbench-1.0.0/bigbench/benchmark_tasks/<task>[/<sub>]/task.json
            if not (member.isfile() and parts[-1] == "task.json" and len(parts) >= 5 and parts[3] in wanted):
                continue
            rel = Path(*parts[3:])
            if ".." in rel.parts:
                continue
            dest = staging / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            with tf.extractfile(member) as src, open(dest, "wb") as dst:
                shutil.copyfileobj(src, dst)
            n_files += 1
    (staging / MANIFEST).write_text(
        json.dumps({"source": BIGBENCH_URL, "sha256": BIGBENCH_SHA256, "tasks": sorted(wanted)})
    )
    shutil.rmtree(out, ignore_errors=True)
    staging.replace(out)  # atomic: a half-extracted folder is never mistaken for a complete one
    tarball.unlink()  # 358 MB we no longer need; the manifest says what was extracted
    log.info("extracted %d BIG-bench task files to %s", n_files, out)
    return out


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = fetch_bigbench()
    print(f"BIG-bench task files: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
