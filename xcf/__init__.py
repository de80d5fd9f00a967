"""xcf: audit image classifiers with counterfactual explanations.

Three kinds of answer to "what would this input have to look like to be classified as class k?",
all made by one search engine (:func:`xcf.engine.search`, also ``xcf.search``) in different charts:

- :class:`DiffeomorphicCounterfactual`: ascent in a normalizing flow's base space;
- :class:`ApproximateCounterfactual`: ascent in a GAN's or VAE's latent space after inversion;
- :class:`AdversarialCounterfactual`: ascent in pixel space (the baseline), or PGD in an L-inf/L2 ball.

The package, one responsibility per folder, imports flowing one way (``docs/architecture.md``):
:mod:`xcf.datasets` and :mod:`xcf.models` (data, the model kinds and the shipped reference models: :func:`reference`), :mod:`xcf.objectives`,
:mod:`xcf.result`, :mod:`xcf.engine`, :mod:`xcf.charts`, :mod:`xcf.explain` (the explainers) and
:mod:`xcf.extrapolate` (knowledge extrapolation), :mod:`xcf.evaluate` (validators, metrics, geometry,
quality, maps, Clever-Hans), :mod:`xcf.scale` (store, streaming, ranks), :mod:`xcf.report` (rendering)
and :mod:`xcf.apps` (demo, audit, command line).
"""

from xcf._version import __version__
from xcf.charts import (
    BallChart,
    Chart,
    Coordinates,
    FlowChart,
    GeneratorChart,
    InversionResult,
    PixelChart,
    invert,
)
from xcf.datasets.watermark import region_mask, stamp
from xcf.engine import search
from xcf.evaluate.cleverhans import AuditVerdict, clever_hans_audit, localisation_score
from xcf.evaluate.maps import compare_attributions, difference_map, mean_map_per_target
from xcf.evaluate.metrics import MetricsTable, compare, counterfactual_metrics
from xcf.evaluate.quality import frechet_distance
from xcf.evaluate.regression import knn_target_mean, regression_metrics
from xcf.evaluate.validators import KNNValidator, SVMValidator
from xcf.explain import (
    AdversarialCounterfactual,
    ApproximateCounterfactual,
    CounterfactualExplainer,
    DiffeomorphicCounterfactual,
)
from xcf.extrapolate import ExtrapolationHistory, KnowledgeExtrapolation
from xcf.models.shipped import reference, references
from xcf.objectives import ClassTarget, ScalarTarget
from xcf.result import CounterfactualResult

__all__ = [
    "AdversarialCounterfactual",
    "ApproximateCounterfactual",
    "AuditVerdict",
    "BallChart",
    "Chart",
    "ClassTarget",
    "Coordinates",
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
    "reference",
    "references",
    "region_mask",
    "regression_metrics",
    "search",
    "stamp",
    "__version__",
]
