"""Source readers: one module per raw format, each turning raw logs into canonical episodes."""
