"""xcf: audit image classifiers with counterfactual explanations.

Three kinds of answer to "what would this input have to look like to be classified as class k?",
all made by one search engine (:func:`xcf.search.search`) in different charts:

- :class:`DiffeomorphicCounterfactual`: ascent in a normalizing flow's base space;
- :class:`ApproximateCounterfactual`: ascent in a GAN's or VAE's latent space after inversion;
- :class:`AdversarialCounterfactual`: ascent in pixel space (the baseline), or PGD in an L-inf/L2 ball.

Modules beside them: :mod:`xcf.geometry` (batched Jacobians, tangent spaces), :mod:`xcf.validate`
(SVM / k-NN validation, metrics), :mod:`xcf.maps` (difference maps), :mod:`xcf.cleverhans` (shortcut
audit), :mod:`xcf.extrapolate` (knowledge extrapolation), :mod:`xcf.quality` (Fréchet distance),
:mod:`xcf.datasets` and :mod:`xcf.models` (the embedded digits default and reference models).
"""

from xcf.charts import Chart, FlowChart, GeneratorChart, PixelChart
from xcf.charts.generator import InversionResult, invert
from xcf.cleverhans import AuditVerdict, clever_hans_audit, localisation_score, region_mask, stamp
from xcf.explain import (
    AdversarialCounterfactual,
    ApproximateCounterfactual,
    CounterfactualExplainer,
    DiffeomorphicCounterfactual,
)
from xcf.extrapolate import ExtrapolationHistory, KnowledgeExtrapolation
from xcf.maps import compare_attributions, difference_map, mean_map_per_target
from xcf.objectives import ClassTarget, ScalarTarget
from xcf.quality import frechet_distance
from xcf.regression import knn_target_mean, regression_metrics
from xcf.search import CounterfactualResult, search
from xcf.validate import KNNValidator, MetricsTable, SVMValidator, compare, counterfactual_metrics

__version__ = "0.1.0"

__all__ = [
    "AdversarialCounterfactual",
    "ApproximateCounterfactual",
    "AuditVerdict",
    "Chart",
    "ClassTarget",
    "CounterfactualExplainer",
    "CounterfactualResult",
    "DiffeomorphicCounterfactual",
    "ExtrapolationHistory",
    "FlowChart",
    "GeneratorChart",
    "InversionResult",
    "KNNValidator",
    "KnowledgeExtrapolation",
    "MetricsTable",
    "PixelChart",
    "SVMValidator",
    "ScalarTarget",
    "clever_hans_audit",
    "compare",
    "compare_attributions",
    "counterfactual_metrics",
    "difference_map",
    "frechet_distance",
    "invert",
    "knn_target_mean",
    "localisation_score",
    "mean_map_per_target",
    "region_mask",
    "regression_metrics",
    "search",
    "stamp",
    "__version__",
]
