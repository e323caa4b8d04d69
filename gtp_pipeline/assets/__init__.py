"""One module per pipeline stage; each asset reads inputs, calls core, writes outputs, reports metadata."""
