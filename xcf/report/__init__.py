"""Rendering: figures, map plots, the HTML report and its sections. Renders what it is given, computes nothing."""
