"""previz: the live half. Recipes, packs, sampling, takes, and the CLI."""
