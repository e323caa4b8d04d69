"""Where the embedded Dagster instance of a profile lives: `.dagster/<profile>/`, configured from instance.yaml.

Dagster decides what is up to date from code and data versions; it cannot see that the profile (or
the artifact root) changed. So each profile and artifact root gets its own instance, next to the
repo: switching profiles never makes one profile's history claim another's artifacts are done.
`make demo` and `make ui` both use it:

    DAGSTER_HOME=$(python -m gtp_pipeline.instance) dagster dev     # prints (and prepares) the folder
"""

import hashlib
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = Path(__file__).with_name("instance.yaml")


def write_instance_yaml(home: Path, template: Path = TEMPLATE) -> Path:
    """The template with every base_dir moved under `home` (absolute), written to home/dagster.yaml."""
    config = yaml.safe_load(template.read_text())
    config["storage"]["sqlite"]["base_dir"] = str(home / "storage")
    for section in ("local_artifact_storage", "compute_logs"):
        config[section]["config"]["base_dir"] = str(home / section)
    home.mkdir(parents=True, exist_ok=True)
    path = home / "dagster.yaml"
    text = yaml.safe_dump(config, sort_keys=False)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def instance_home(profile: str | None = None, artifact_root: str | None = None) -> Path:
    """`.dagster/<profile>` (plus a hash of a non-default artifact root), with its dagster.yaml written. Without a
    profile: the run's name, which the configuration file (GTP_CONFIG) gives when there is one, as the demo's."""
    from gtp_pipeline.core.config import settings as env
    from gtp_pipeline.core.config.run_config import load_run_config
    from gtp_pipeline.resources import default_artifact_root

    if profile is None:
        config = env.get("GTP_CONFIG")
        profile = load_run_config(config).name if config else env.get("GTP_PROFILE")
    root = artifact_root or default_artifact_root(profile)
    name = profile
    if Path(root).resolve() != (REPO_ROOT / "artifacts" / profile).resolve():
        name += "-" + hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:8]
    home = REPO_ROOT / ".dagster" / name
    write_instance_yaml(home)
    return home


if __name__ == "__main__":
    print(instance_home())
    sys.exit(0)
