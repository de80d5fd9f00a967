"""Captum-style counterfactual explainers, one per chart."""

from xcf.charts.ball import BallChart
from xcf.explain.adversarial import AdversarialCounterfactual
from xcf.explain.approximate import ApproximateCounterfactual
from xcf.explain.base import CounterfactualExplainer
from xcf.explain.diffeomorphic import DiffeomorphicCounterfactual

__all__ = [
    "AdversarialCounterfactual",
    "ApproximateCounterfactual",
    "BallChart",
    "CounterfactualExplainer",
    "DiffeomorphicCounterfactual",
]
