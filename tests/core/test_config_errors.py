"""Configuration errors name the setting and the value; path lists take any file name."""

import pytest

from gtp_pipeline.core.config.config_errors import ConfigurationError, require_files
from gtp_pipeline.core.config.profiles import ProfileError, get_profile, split_paths


def test_path_lists_split_on_colon_and_comma():
    assert split_paths("a.jsonl:b.parquet,c.jsonl", "GTP_CORPUS_FILES") == ("a.jsonl", "b.parquet", "c.jsonl")
    assert split_paths(None) == () and split_paths("  ") == ()


def test_a_json_array_names_files_whose_names_hold_separators(tmp_path):
    odd = tmp_path / "pool, part 1:2.jsonl"
    odd.write_text('{"prompt": "p", "response": "r"}\n')
    value = f'["{odd}", "b.jsonl"]'
    assert split_paths(value, "GTP_CORPUS_FILES") == (str(odd), "b.jsonl")
    profile = get_profile("full", corpus_files=split_paths(value), target_task="gsm8k")
    assert profile.pool[0].files == (str(odd), "b.jsonl")


@pytest.mark.parametrize("value", ['["a.jsonl", ', "[1, 2]", '[""]'])
def test_a_bad_json_array_names_the_setting(value):
    with pytest.raises(ConfigurationError, match="GTP_TARGET_FILES="):
        split_paths(value, "GTP_TARGET_FILES")


def test_missing_files_name_the_setting_and_the_path(tmp_path):
    (tmp_path / "ok.jsonl").write_text("")
    require_files([str(tmp_path / "ok.jsonl")], "GTP_CORPUS_FILES")
    with pytest.raises(ConfigurationError, match=r"GTP_CORPUS_FILES='.*gone\.jsonl': .*gone\.jsonl does not exist"):
        require_files([str(tmp_path / "ok.jsonl"), str(tmp_path / "gone.jsonl")], "GTP_CORPUS_FILES")
    with pytest.raises(ConfigurationError, match="is not a file"):
        require_files([str(tmp_path)], "GTP_TARGET_FILES")


def test_a_full_profile_without_files_is_a_configuration_error():
    with pytest.raises(ProfileError, match="set GTP_CORPUS_FILES") as err:
        get_profile("full")
    assert isinstance(err.value, ConfigurationError)
