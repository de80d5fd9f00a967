"""Charts: the coordinates a counterfactual search runs in."""

from xcf.charts.base import Chart
from xcf.charts.flow import FlowChart
from xcf.charts.generator import GeneratorChart
from xcf.charts.pixel import PixelChart

__all__ = ["Chart", "FlowChart", "GeneratorChart", "PixelChart"]
