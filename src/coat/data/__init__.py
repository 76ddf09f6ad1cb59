"""Data sets (image folders, the embedded default) and the transforms of each recipe."""
