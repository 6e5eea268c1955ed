"""Per-version queues, batching, priorities and deadlines; the device gate; load-adaptive execution."""
