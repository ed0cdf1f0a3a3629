"""Report text: R2Gen-compatible cleaning and the word vocabulary."""
