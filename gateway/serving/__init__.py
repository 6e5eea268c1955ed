"""Model versions on disk, loaded, validated against, reloaded blue/green and retired."""
