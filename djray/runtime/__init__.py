"""How ops run: Ray Data plans, progress, manifest. Ops never import this package."""
