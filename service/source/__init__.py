"""Redis: the client, paged SCAN with each key's expiry and length, byte-bounded value fetches, the full scan."""
