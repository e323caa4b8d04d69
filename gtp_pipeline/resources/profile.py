"""ProfileResource: which profile (tiny/demo/full) a run uses, and the user's files for `full`."""

import dagster as dg

from gtp_pipeline.core.profiles import Profile, get_profile


class ProfileResource(dg.ConfigurableResource):
    """The profile settings every asset reads; change `name` in run config to switch profile."""

    name: str = "demo"
    corpus_files: list[str] = []  # JSONL/Parquet pool files (required for full)
    target_files: list[str] = []  # JSONL/Parquet target files
    target_task: str | None = None  # or a packaged target: "gsm8k", "strategyqa", ...
    checkpoint_dir: str = ""  # a folder of the user's own LoRA checkpoints, watched by the checkpoint sensor

    def settings(self) -> Profile:
        return get_profile(self.name, tuple(self.corpus_files), tuple(self.target_files), self.target_task)
