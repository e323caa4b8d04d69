"""The pool and the target: packaged and user sources, one record type, normalization, de-duplication, decontamination and the target's dev/test split."""
