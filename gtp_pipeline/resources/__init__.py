"""Resources per profile, chosen in one place (`resources_for_profile`)."""

from pathlib import Path

from gtp_pipeline.core.config import settings as env
from gtp_pipeline.core.config.profiles import PROFILES, Profile, split_paths
from gtp_pipeline.core.config.run_config import CONFIG_ENV, load_run_config
from gtp_pipeline.core.ingest.fetch import model_cache_dir
from gtp_pipeline.resources.compute import ComputeResource
from gtp_pipeline.resources.embedder import EmbedderResource
from gtp_pipeline.resources.io_managers import ParquetIOManager
from gtp_pipeline.resources.models import MODEL_DIR_ENV, HFFolderSource, ModelSource, SmolLM2Source, TinyModelSource
from gtp_pipeline.resources.profile import ProfileResource
from gtp_pipeline.resources.storage import ArtifactStore

ARTIFACT_ROOT_ENV = "GTP_ARTIFACT_ROOT"
REPO_ROOT = Path(__file__).resolve().parents[2]


def default_artifact_root(profile: str) -> str:
    """$GTP_ARTIFACT_ROOT, else `artifacts/<profile>` in the checkout."""
    return env.get(ARTIFACT_ROOT_ENV) or str(REPO_ROOT / "artifacts" / profile)


def model_source_for_profile(profile: str | Profile) -> ModelSource:
    """The profile's model: a random Llama (tiny), SmolLM2 from its package (demo, experiment), or a local HF folder
    (full: the configuration's model_dir, else $GTP_MODEL_DIR)."""
    if isinstance(profile, str):
        profile = PROFILES.get(profile, PROFILES["full"])
    if profile.model == "tiny":
        return TinyModelSource()
    if profile.model == "smollm2":
        return SmolLM2Source(cache_dir=str(model_cache_dir()))
    return HFFolderSource(path=profile.model_dir or env.get(MODEL_DIR_ENV))


def resources_for_profile(profile: str, artifact_root: str | None = None, config_file: str | None = None) -> dict:
    """Every resource the assets need, configured for `profile` (tiny | demo | ...), or for the run configuration
    file `config_file` (default $GTP_CONFIG), whose name then replaces the profile's."""
    config_file = env.get(CONFIG_ENV) if config_file is None else config_file
    settings = load_run_config(config_file) if config_file else PROFILES.get(profile, PROFILES["full"])
    profile = settings.name if config_file else profile
    store = ArtifactStore(root=artifact_root or default_artifact_root(profile))
    return {
        "profile": ProfileResource(
            name=profile,
            config_file=str(Path(config_file).resolve()) if config_file else "",
            corpus_files=list(split_paths(env.get("GTP_CORPUS_FILES"), "GTP_CORPUS_FILES")),
            target_files=list(split_paths(env.get("GTP_TARGET_FILES"), "GTP_TARGET_FILES")),
            target_task=env.get("GTP_TARGET_TASK") or None,
            checkpoint_dir=env.get("GTP_CHECKPOINT_DIR"),
        ),
        "store": store,
        "io_manager": ParquetIOManager(store=store),
        "compute": ComputeResource(device=env.get("GTP_DEVICE")),
        "model": model_source_for_profile(settings),
        # tiny: shorter inputs keep the real MiniLM fast enough for tests
        "embedder": EmbedderResource(
            model_dir=env.get("GTP_EMBEDDER_DIR"), max_seq_length=128 if profile == "tiny" else 256
        ),
    }
