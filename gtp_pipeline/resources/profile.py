"""ProfileResource: which profile (tiny/demo/...) or configuration file a run uses, and the user's files."""

import dagster as dg

from gtp_pipeline.core.config.profiles import Profile, get_profile, with_user_inputs


class ProfileResource(dg.ConfigurableResource):
    """The settings every asset reads: a named profile, or a run configuration file over one (GTP_CONFIG)."""

    name: str = "demo"  # the profile's name, or the configuration file's `name`
    config_file: str = ""  # a YAML run configuration (core/config/run_config.py); wins over `name`'s defaults
    corpus_files: list[str] = []  # JSONL/Parquet pool files (required for full)
    target_files: list[str] = []  # JSONL/Parquet target files
    target_task: str | None = None  # or a packaged target: "gsm8k", "strategyqa", ...
    checkpoint_dir: str = ""  # a folder of the user's own LoRA checkpoints, watched by the checkpoint sensor

    def settings(self) -> Profile:
        inputs = (tuple(self.corpus_files), tuple(self.target_files), self.target_task)
        if self.config_file:
            from gtp_pipeline.core.config.run_config import load_run_config

            return with_user_inputs(load_run_config(self.config_file), *inputs)
        return get_profile(self.name, *inputs)
