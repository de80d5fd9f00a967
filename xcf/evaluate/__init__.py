"""Judging counterfactuals, never searching them: validators, metrics, geometry, quality, maps, shortcuts."""

from xcf.evaluate.cleverhans import AuditVerdict, clever_hans_audit, localisation_score
from xcf.evaluate.geometry import jacobian, jvp, vjp
from xcf.evaluate.manifold import manifold_dimension, on_manifold_fraction, tangent_space
from xcf.evaluate.maps import compare_attributions, difference_map, mean_map_per_target
from xcf.evaluate.metrics import (
    METRIC_COLUMNS,
    MetricsTable,
    compare,
    counterfactual_metrics,
)
from xcf.evaluate.quality import frechet_distance
from xcf.evaluate.regression import knn_target_mean, regression_metrics
from xcf.evaluate.validators import KNNValidator, SVMValidator, nearest_distance

__all__ = [
    "METRIC_COLUMNS", "AuditVerdict", "KNNValidator", "MetricsTable", "SVMValidator", "clever_hans_audit",
    "compare", "compare_attributions", "counterfactual_metrics", "difference_map", "frechet_distance",
    "jacobian", "jvp", "knn_target_mean", "localisation_score", "manifold_dimension", "mean_map_per_target",
    "nearest_distance", "on_manifold_fraction", "regression_metrics", "tangent_space", "vjp",
]
