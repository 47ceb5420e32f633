"""Task model and what is learned about tasks across scans: decoding, tracking, history. No Redis, no HTTP."""
