"""A model_checkpoint partition typed into the launch dialog by hand is named, with how to remove it, and removable."""

import dagster as dg
import pytest


def test_a_checkpoint_partition_added_by_hand_is_named_with_how_to_remove_it_and_can_be_removed(tmp_path):
    from gtp_pipeline.assets.locations import resolve_checkpoint
    from gtp_pipeline.demo import remove_checkpoint_partition
    from gtp_pipeline.resources.storage import ArtifactStore

    store = ArtifactStore(root=str(tmp_path))
    hint = "python -m gtp_pipeline.demo --remove-checkpoint typo"
    with pytest.raises(FileNotFoundError, match="no checkpoint folder is configured") as err:
        resolve_checkpoint(store, "corpus-v1", "typo", user_dir="")
    assert hint in str(err.value)
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        resolve_checkpoint(store, "corpus-v1", "typo", user_dir=str(tmp_path))
    assert hint in str(err.value)

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("model_checkpoint", ["warmup-e1", "typo"])
        remove_checkpoint_partition(instance, "typo")
        assert instance.get_dynamic_partitions("model_checkpoint") == ["warmup-e1"]
        with pytest.raises(ValueError, match="no model_checkpoint partition 'nope'"):
            remove_checkpoint_partition(instance, "nope")
