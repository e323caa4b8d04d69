"""One module per pipeline stage; each asset reads inputs, calls core, writes outputs, reports metadata."""

import warnings

# Content-hash data versions on Output are how this pipeline keeps lineage; Dagster marks the parameter
# beta. Silence that one warning, nothing else.
warnings.filterwarnings("ignore", message=r"Parameter `data_version` of initializer `Output.__init__`")
warnings.filterwarnings("ignore", message=r"Parameter `backfill_policy` of function `asset`")  # single-run backfills
warnings.filterwarnings("ignore", message=r"Class `MultiToSingleDimensionPartitionMapping`")  # shards -> checkpoint
