"""Align models ourselves (SFT, DPO, an optional association loss) and keep checkpoints ihs can analyse."""
