"""Vision branch: DINO patch scores, patch retention and class evidence in one forward pass."""
