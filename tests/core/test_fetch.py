"""The shipped BIG-bench subset installs, checks what it decompresses, and rebuilds to the same bytes."""

import gzip
import json
import shutil

import pytest

from gtp_pipeline.core.ingest.fetch import MANIFEST, SHIPPED_DIR, SUBSET_CAP, build_subset, install_bigbench


def test_install_writes_every_shipped_file_once(tmp_path):
    out = install_bigbench(tmp_path)
    manifest = json.loads((SHIPPED_DIR / MANIFEST).read_text())
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("task.json")) == sorted(manifest["files"])
    stamp = (out / MANIFEST).stat().st_mtime_ns
    assert install_bigbench(tmp_path) == out and (out / MANIFEST).stat().st_mtime_ns == stamp


def test_a_tampered_shipped_file_is_refused(tmp_path):
    shipped = tmp_path / "shipped"
    shutil.copytree(SHIPPED_DIR, shipped)
    victim = shipped / "snarks" / "task.json.gz"
    data = gzip.decompress(victim.read_bytes()).replace(b"sarcastic", b"sincere", 1)
    victim.write_bytes(gzip.compress(data))
    with pytest.raises(OSError, match="snarks/task.json.gz decompresses to sha256"):
        install_bigbench(tmp_path / "data", shipped=shipped)
    assert not (tmp_path / "data" / "bigbench").exists()


def test_pool_tasks_are_capped_and_keep_the_canary(tmp_path):
    out = install_bigbench(tmp_path)
    subtasks = sorted((out / "natural_instructions").glob("subtask*/task.json"))
    assert len(subtasks) == 61
    for path in subtasks:
        task = json.loads(path.read_text())
        assert 0 < len(task["examples"]) <= SUBSET_CAP and "canary GUID" in task["canary"]


def test_rebuilding_from_an_installation_gives_the_shipped_bytes(tmp_path):
    rebuilt = build_subset(install_bigbench(tmp_path / "data"), out=tmp_path / "rebuilt")
    assert rebuilt == json.loads((SHIPPED_DIR / MANIFEST).read_text())
    for rel in rebuilt["files"]:
        assert (tmp_path / "rebuilt" / f"{rel}.gz").read_bytes() == (SHIPPED_DIR / f"{rel}.gz").read_bytes()
