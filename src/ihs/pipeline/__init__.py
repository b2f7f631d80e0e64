"""ihs run: the run config, cache keys, the run folder layout and the runner over the registered steps."""
