"""Scale-out: extraction spread over the actors of a Ray cluster (see docs/SCALING.md)."""
