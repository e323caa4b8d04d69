"""Setup-time install of the BIG-bench task files the pipeline reads.

BIG-bench 1.0.0 is a 358 MB sdist whose requirements (tensorflow, t5, a BLEURT zip) cannot and must not be
installed, and package indexes may stop serving it (ours did). So this repository ships the part the
pipeline reads, as gzipped task.json files under `gtp_pipeline/data/bigbench/` (Apache-2.0, see the README
there): every target task whole, and the first `SUBSET_CAP` examples of each Natural Instructions subtask.
Setup decompresses them into `<data_dir>/bigbench/<task>/task.json`, checking each file's sha256 against
the shipped manifest. A user who has the full sdist can extract all of it instead (`--tarball`); both keep
the examples in the sdist's order, so the first rows of a subtask are the same either way.

    python -m gtp_pipeline.core.ingest.fetch                    # idempotent; prints where the data is
    python -m gtp_pipeline.core.ingest.fetch --tarball PATH     # the full task files, from bigbench-1.0.0.tar.gz

At run time the pipeline only reads the extracted files; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import shutil
import sys
import tarfile
from pathlib import Path

from gtp_pipeline.core.config import settings as env

log = logging.getLogger(__name__)

BIGBENCH_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"  # bigbench-1.0.0.tar.gz
SHIPPED_DIR = Path(__file__).resolve().parents[2] / "data" / "bigbench"
SUBSET_CAP = 200  # Natural Instructions examples kept per subtask: 61 x 200 is a pool of about 12,000

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
POOL_TASKS = ("natural_instructions",)  # capped in the shipped subset; the others ship whole
MANIFEST = "manifest.json"


class DataNotInstalledError(FileNotFoundError):
    """Packaged data the profile needs is not on this machine; the message says how to get it."""


def data_dir() -> Path:
    """Where setup puts extracted data: $GTP_DATA_DIR, else `.data/` in the checkout."""
    if folder := env.get("GTP_DATA_DIR"):
        return Path(folder).resolve()
    return Path(__file__).resolve().parents[3] / ".data"


def model_cache_dir() -> Path:
    """Where converted models (SmolLM2 from its GGUF) are kept: $GTP_MODEL_CACHE, else `models/` in data_dir()."""
    folder = env.get("GTP_MODEL_CACHE")
    return Path(folder).expanduser().resolve() if folder else data_dir() / "models"


def bigbench_dir(root: Path | None = None) -> Path:
    """The folder holding the extracted BIG-bench task files; raises if setup has not run."""
    base = (root or data_dir()) / "bigbench"
    if not (base / MANIFEST).exists():
        raise DataNotInstalledError(
            f"BIG-bench task files are not in {base}. Run `make setup` "
            f"(or `python -m gtp_pipeline.core.ingest.fetch`) once; it installs them from this repository."
        )
    return base


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _publish(staging: Path, out: Path, manifest: dict) -> Path:
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    staging.replace(out)  # atomic: a half-written folder is never mistaken for a complete one
    return out


def install_bigbench(root: Path | None = None, shipped: Path = SHIPPED_DIR) -> Path:
    """Decompress the shipped task files into `<root>/bigbench`, each checked against its sha256."""
    root = root or data_dir()
    out = root / "bigbench"
    shipped_manifest = json.loads((shipped / MANIFEST).read_text())
    if (out / MANIFEST).exists():
        have = json.loads((out / MANIFEST).read_text())
        if have.get("cap") is None and set(have["tasks"]) >= set(shipped_manifest["tasks"]):
            return out  # the full extraction from the sdist: a superset of what we ship
        if have == shipped_manifest:
            return out
    staging = root / "bigbench.part"
    shutil.rmtree(staging, ignore_errors=True)
    for rel, digest in shipped_manifest["files"].items():
        data = gzip.decompress((shipped / f"{rel}.gz").read_bytes())
        if _sha256(data) != digest:
            raise OSError(f"{shipped / rel}.gz decompresses to sha256 {_sha256(data)}, expected {digest}")
        dest = staging / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    log.info("installed %d BIG-bench task files to %s", len(shipped_manifest["files"]), out)
    return _publish(staging, out, shipped_manifest)


def extract_tarball(tarball: Path, root: Path | None = None, tasks: tuple[str, ...] = BIGBENCH_TASKS) -> Path:
    """Extract every example of the wanted tasks from the full bigbench-1.0.0 sdist (sha256-checked)."""
    root = root or data_dir()
    digest = hashlib.sha256()
    with open(tarball, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != BIGBENCH_SHA256:
        raise OSError(f"{tarball} has sha256 {digest.hexdigest()}, expected {BIGBENCH_SHA256} (bigbench-1.0.0)")
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
    log.info("extracted %d BIG-bench task files to %s", n_files, root / "bigbench")
    return _publish(staging, root / "bigbench", {"source": tarball.name, "cap": None, "tasks": sorted(wanted)})


def build_subset(extracted: Path, out: Path = SHIPPED_DIR, cap: int = SUBSET_CAP) -> dict:
    """Maintainers: write the shipped subset from a full extraction (`extract_tarball`'s folder).

    Target tasks are copied byte for byte; pool tasks keep their first `cap` examples and every other key
    (the BIG-bench canary string included). Gzip with mtime 0, so the same input gives the same bytes.
    """
    files = {}
    for path in sorted(extracted.rglob("task.json")):
        rel = path.relative_to(extracted).as_posix()
        data = path.read_bytes()
        if rel.split("/")[0] in POOL_TASKS:
            task = json.loads(data)
            task["examples"] = task.get("examples", [])[:cap]
            data = json.dumps(task, ensure_ascii=False, indent=1).encode("utf-8")
        dest = out / f"{rel}.gz"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
        files[rel] = _sha256(data)
    tasks = sorted({rel.split("/")[0] for rel in files})
    manifest = {"source": "bigbench-1.0.0.tar.gz", "source_sha256": BIGBENCH_SHA256, "cap": cap, "tasks": tasks}
    manifest["files"] = files
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tarball", type=Path, help="bigbench-1.0.0.tar.gz, to extract every example")
    args = parser.parse_args(argv)
    out = extract_tarball(args.tarball) if args.tarball else install_bigbench()
    print(f"BIG-bench task files: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
