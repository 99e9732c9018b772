"""Model builders and weight sources. Imports no djray module but `_compat` (ARCHITECTURE §3)."""
