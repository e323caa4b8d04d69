"""Which fine-tune a run is: a selection method at a budget, or the full pool, or the base model, and a seed.

One type, one way to write it and one way to read it back, for the fine-tune partitions ("gtp-5pct" x "0", written
"gtp-5pct|0" where Dagster joins the two), the training set, the evaluation table and the report.
"""

from __future__ import annotations

from dataclasses import dataclass

FULL, BASE = "full", "base"
FULL_BUDGET, BASE_BUDGET = "100pct", "-"  # how the evaluation table labels the runs that have no budget


@dataclass(frozen=True)
class RunKey:
    method: str  # gtp | topk | random | clusterclip | full | base
    budget: str = ""  # a budget label (core/profiles.budget_label: "5pct", "n1000"); "" for full and base
    seed: int = 0  # the fine-tune seed; -1 for the base model

    def __post_init__(self):
        if not self.method or "-" in self.method or "|" in self.method:
            raise ValueError(f"a method name is non-empty, without '-' or '|': {self.method!r}")
        if (self.method in (FULL, BASE)) != (self.budget == ""):
            raise ValueError(f"{self.method!r} {'takes no' if self.budget else 'needs a'} budget, got {self.budget!r}")

    @property
    def run(self) -> str:
        """The run's name, the `run` dimension of the fine-tune partitions: "gtp-5pct", "full"."""
        return f"{self.method}-{self.budget}" if self.budget else self.method

    @property
    def budget_column(self) -> str:
        """The budget as the evaluation and report tables write it: the label, "100pct" for full, "-" for base."""
        return self.budget or (FULL_BUDGET if self.method == FULL else BASE_BUDGET)

    @property
    def partition_key(self) -> str:
        """The fine-tune partition's key as Dagster writes it (dimensions joined by "|" in name order)."""
        return f"{self.run}|{self.seed}"

    @classmethod
    def from_run(cls, run: str, seed: int | str = 0) -> RunKey:
        """The key of a run name ("gtp-5pct", "full", "base") and a seed."""
        method, _, budget = run.rpartition("-") if run not in (FULL, BASE) else (run, "", "")
        if not method:
            raise ValueError(f"not a run name: {run!r} (expected <method>-<budget>, full or base)")
        return cls(method, budget, int(seed))

    @classmethod
    def parse(cls, partition_key: str) -> RunKey:
        """The key of a fine-tune partition key "gtp-5pct|0"."""
        run, sep, seed = str(partition_key).partition("|")
        if not sep:
            raise ValueError(f"not a fine-tune partition key: {partition_key!r} (expected <run>|<seed>)")
        return cls.from_run(run, seed)
