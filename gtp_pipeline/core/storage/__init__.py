"""Durable, verified storage: atomic writes, resumable checksummed feature stores, mirrors of remote roots."""
