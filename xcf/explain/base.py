"""The Captum-style explainer every counterfactual method shares: a chart plus the engine."""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from captum.attr import Attribution
from captum.log import log_usage
from torch import Tensor

from xcf._typing import OutputKind, TargetType, TensorOrTuple
from xcf._validation import (
    as_target_tensor,
    check_inputs,
    check_model_output,
    check_module_mode,
    check_same_dtype_device,
    format_inputs,
    preserved,
)
from xcf.charts.base import Chart
from xcf.engine import rms, search, split_forward_args, timed
from xcf.objectives import ClassTarget, Objective
from xcf.result import CounterfactualResult

__all__ = ["CounterfactualExplainer"]



class CounterfactualExplainer(Attribution):
    """Counterfactuals by ascent of the target class in the coordinates of a :class:`Chart`.

    ``attribute`` follows Captum: it returns the difference map ``x' - x`` with the input's shape
    (a tuple in gives a tuple out).  ``counterfactual`` returns the full
    :class:`~xcf.result.CounterfactualResult`.

    Args:
        forward_func: the classifier ``f``.
        chart: where the search runs.
        output: what ``forward_func`` returns: ``"logits"`` (default), ``"probs"`` or ``"log_probs"``.

    Every explainer takes its model(s) positionally and every option by keyword, with the same names
    for the same things; ``counterfactual`` takes the search options (``confidence``, ``steps``, ``lr``,
    ``update``) per call, defaulting to the chart's.

    Example:
        >>> from xcf.charts import PixelChart
        >>> clf = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).eval()
        >>> explainer = CounterfactualExplainer(clf, PixelChart(None))
        >>> r = explainer.counterfactual(torch.zeros(3, 1, 2, 2), target=1, update="l2", lr=0.1, steps=200)
        >>> bool(r.success.all()), tuple(r.counterfactual.shape)
        (True, (3, 1, 2, 2))
    """

    method = "counterfactual"

    def __init__(self, forward_func: Callable[..., Tensor], chart: Chart, *, output: OutputKind = "logits"):
        super().__init__(forward_func)
        if output not in ("logits", "probs", "log_probs"):
            raise ValueError(f"output must be 'logits', 'probs' or 'log_probs', got {output!r}")
        self.chart = chart
        self.output = output

    def has_convergence_delta(self) -> bool:
        return False

    @log_usage()
    def attribute(
        self,
        inputs: TensorOrTuple,
        target: TargetType | None = None,
        additional_forward_args: Any = None,
        **kwargs: Any,
    ) -> TensorOrTuple:
        """The difference map ``x' - x`` toward ``target``.

        Args:
            inputs: a ``(N, ...)`` tensor, or a one-tuple of it.
            target: the class to reach: int, list of ints or tensor (one per input, or one for all);
                or an objective such as :class:`~xcf.objectives.ScalarTarget` (same as ``objective=``).
            additional_forward_args: extra arguments for ``forward_func``.
            **kwargs: passed to :meth:`counterfactual` (``confidence``, ``steps``, ``lr``,
                ``objective``, ...).

        Returns:
            ``x' - x``, a tensor or a one-tuple like ``inputs``.
        """
        x, is_tuple = format_inputs(inputs)
        result = self.counterfactual(x, target=target, additional_forward_args=additional_forward_args, **kwargs)
        diff = result.difference
        return (diff,) if is_tuple else diff

    def counterfactual(
        self,
        inputs: TensorOrTuple,
        target: TargetType | None = None,
        *,
        additional_forward_args: Any = None,
        confidence: Optional[float] = None,
        steps: Optional[int] = None,
        lr: Optional[float] = None,
        update: Optional[str] = None,
        objective: Optional[Objective] = None,
        progress: bool = False,
    ) -> CounterfactualResult:
        """Search counterfactuals of ``inputs`` toward ``target``.

        Args:
            inputs: a ``(N, ...)`` tensor (or one-tuple) of inputs, finite and on the model's device.
            target: class index per input (int, list or tensor); required unless ``objective`` is given.
                An objective passed here (anything with ``check`` and ``__call__``, e.g. a
                :class:`~xcf.objectives.ScalarTarget`) is used as ``objective``.
            additional_forward_args: extra arguments for ``forward_func``.
            confidence: stop a sample once ``softmax(f(x'))[target] >= confidence`` (default: the chart's,
                0.99 for pixel and generator charts).
            steps: update budget per sample (default: the chart's).
            lr: step size (default: the chart's).
            update: the step rule, ``"adam"``, ``"sign"`` or ``"l2"`` (default: the chart's; see
                :func:`xcf.engine.search`).
            objective: a custom :class:`~xcf.objectives.Objective` in place of the class target
                (``confidence`` is then unused); an objective with a ``record(n, device)`` method
                (:class:`~xcf.objectives.ScalarTarget`) stores its per-sample threshold and direction
                in ``result.info``.
            progress: show a progress bar.

        Returns:
            A :class:`~xcf.result.CounterfactualResult`.
        """
        elapsed = timed()
        x, _ = format_inputs(inputs)
        check_inputs(x)
        if callable(target) and hasattr(target, "check"):
            if objective is not None:
                raise ValueError("an objective was passed both as target and as objective; pass it once")
            objective, target = target, None
        if objective is not None and target is not None:
            raise ValueError("pass either target (a class to reach) or objective, not both")
        if objective is None:
            confidence = self.chart.confidence if confidence is None else confidence
            objective = ClassTarget(as_target_tensor(target, x.shape[0], x.device), confidence, self.output)
        targets = getattr(objective, "target", None)
        chart = self.chart
        with torch.enable_grad(), preserved(self.forward_func, *chart.modules()):
            check_module_mode(self.forward_func, "classifier")
            for module in chart.modules():
                check_module_mode(module, f"{chart.name} model", forbid_training=chart.needs_eval)
            check_same_dtype_device(x, {"classifier": self.forward_func,
                                        **{f"{chart.name} model": m for m in chart.modules()}})
            chart.check(x)
            with torch.no_grad():  # the classifier and the target are checked before any (slow) encoding
                args, per_sample = split_forward_args(additional_forward_args, x.shape[0])
                probe = self.forward_func(x, *args)
                if isinstance(probe, Tensor):
                    objective.check(probe)
                check_model_output(probe, x.shape[0])
            coords = chart.start(x, progress=progress)
            start = coords.start.detach()
            with torch.no_grad():
                try:
                    reconstruction = coords.decode(start)
                except NotImplementedError as e:
                    raise ValueError(f"the {chart.name} model cannot map coordinates back to inputs: its inverse is "
                                     f"not implemented ({type(e).__name__}{': ' + str(e) if str(e) else ''})") from e
            if reconstruction.shape != x.shape:
                raise ValueError(
                    f"the {chart.name} model decodes to shape {tuple(reconstruction.shape[1:])} "
                    f"but the inputs have shape {tuple(x.shape[1:])}"
                )
            error = rms(reconstruction, x)
            info = {**coords.info, **chart.check_reconstruction(error)}
            if callable(getattr(objective, "record", None)):
                info = {**info, **objective.record(x.shape[0], x.device)}
            out = search(
                self.forward_func,
                coords.decode,
                start,
                objective,
                steps=chart.steps if steps is None else steps,
                lr=chart.step_size(start) if lr is None else lr,
                update=chart.update if update is None else update,
                additional_forward_args=additional_forward_args,
                project=coords.project,
                progress=progress,
                description=f"{self.method} counterfactuals",
            )
        return CounterfactualResult(
            inputs=x,
            latent_start=start,
            reconstruction=reconstruction,
            reconstruction_error=error,
            target=targets if isinstance(targets, Tensor) else torch.full_like(out["steps"], -1),
            wall_time=elapsed(),
            method=self.method,
            info=info,
            **out,
        )
