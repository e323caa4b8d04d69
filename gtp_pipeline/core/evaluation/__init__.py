"""What a selection buys: evaluation on the target's test split, paired verdicts with intervals, the report and its plots, the variant study and the multi-target report."""
