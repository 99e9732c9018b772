"""Storage access, shard readers and the governed writer."""
