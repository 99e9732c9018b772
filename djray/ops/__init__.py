"""Governance ops. Each file holds one op; an op knows nothing about how it is run (ARCHITECTURE §3)."""
