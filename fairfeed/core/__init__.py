"""What every layer shares: the record dtype and codes, the id registry, the configuration
schema, counters, the subscription model and backoff. Imports nothing else of fairfeed."""
