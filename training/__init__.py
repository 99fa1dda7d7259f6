"""Training and data preparation of the bundled model: run from a checkout, not shipped in the wheel."""
