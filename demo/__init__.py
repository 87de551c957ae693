"""Procedural demo data (no downloads needed) written in the released on-disk dataset formats."""
