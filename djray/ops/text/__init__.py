"""Text branch: caption normalisation, the concat / text_only / rewrite modes and their LLM engines (paper §3.2)."""
