"""Figures: tensors in, ``matplotlib.figure.Figure`` out (nothing is shown or saved here)."""

from .plots import plot_samples, save_figure, scatter_pair

__all__ = ["plot_samples", "save_figure", "scatter_pair"]
