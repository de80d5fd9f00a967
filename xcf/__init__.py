"""xcf: audit image classifiers with counterfactual explanations."""

from xcf.charts import Chart, FlowChart, PixelChart
from xcf.explain import CounterfactualExplainer, DiffeomorphicCounterfactual
from xcf.objectives import ClassTarget
from xcf.search import CounterfactualResult, search

__version__ = "0.1.0"

__all__ = [
    "Chart",
    "ClassTarget",
    "CounterfactualExplainer",
    "CounterfactualResult",
    "DiffeomorphicCounterfactual",
    "FlowChart",
    "PixelChart",
    "search",
    "__version__",
]
