"""RunKey: one way to write a fine-tune's name and partition key, and one way to read them back."""

import pytest

from gtp_pipeline.core.config.profiles import MULTI_TARGET, TINY, budget_label, finetune_runs
from gtp_pipeline.core.config.run_key import RunKey


@pytest.mark.parametrize(
    ("key", "run", "partition", "budget_column"),
    [
        (RunKey("gtp", "5pct", 0), "gtp-5pct", "gtp-5pct|0", "5pct"),
        (RunKey("topk", "0.5pct", 2), "topk-0.5pct", "topk-0.5pct|2", "0.5pct"),
        (RunKey("clusterclip", "n1000", 1), "clusterclip-n1000", "clusterclip-n1000|1", "n1000"),
        (RunKey("full", "", 0), "full", "full|0", "100pct"),
        (RunKey("base", "", -1), "base", "base|-1", "-"),
    ],
)
def test_keys_write_and_read_back(key, run, partition, budget_column):
    assert (key.run, key.partition_key, key.budget_column) == (run, partition, budget_column)
    assert RunKey.parse(partition) == key and RunKey.from_run(run, key.seed) == key


def test_every_profile_run_name_reads_back_to_its_method_and_budget():
    for profile in (TINY, MULTI_TARGET):
        keys = [RunKey.from_run(run) for run in finetune_runs(profile)]
        labels = {budget_label(b) for b in profile.budgets.budgets}
        assert {k.budget for k in keys if k.method != "full"} == labels
        assert {k.method for k in keys} == {"gtp", "topk", "random", "clusterclip", "full"}


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda: RunKey("gtp"), "'gtp' needs a budget"),
        (lambda: RunKey("full", "5pct"), "'full' takes no budget"),
        (lambda: RunKey("my-method", "5pct"), "without '-' or '|'"),
        (lambda: RunKey.parse("gtp-5pct"), "not a fine-tune partition key"),
        (lambda: RunKey.from_run("gtp"), "not a run name: 'gtp'"),
        (lambda: RunKey.from_run("-5pct"), "not a run name"),
        (lambda: RunKey.parse("gtp-5pct|x"), "invalid literal"),
    ],
)
def test_malformed_keys_are_refused(make, says):
    with pytest.raises(ValueError, match=says):
        make()
