"""Captum-style counterfactual explainers, one per chart."""

from xcf.explain.base import CounterfactualExplainer
from xcf.explain.diffeomorphic import DiffeomorphicCounterfactual

__all__ = ["CounterfactualExplainer", "DiffeomorphicCounterfactual"]
