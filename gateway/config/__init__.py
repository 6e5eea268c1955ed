"""Settings as validated records: the command line, OVMS's config.json, its pipeline schema."""
