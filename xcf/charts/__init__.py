"""Charts: the coordinates a counterfactual search runs in."""

from xcf.charts.ball import BallChart
from xcf.charts.base import Chart, Coordinates
from xcf.charts.flow import FlowChart
from xcf.charts.generator import GeneratorChart
from xcf.charts.inversion import InversionResult, invert
from xcf.charts.pixel import PixelChart

__all__ = ["BallChart", "Chart", "Coordinates", "FlowChart", "GeneratorChart", "InversionResult", "PixelChart", "invert"]
