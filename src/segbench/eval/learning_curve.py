"""Learning curves: how a score grows with the number of labels, and what twice the labels would give.

Pure numpy / scipy (no torch): the numbers come from runs scored by :mod:`segbench.eval`; this module
only fits and extrapolates them.

* :func:`fit_learning_curve` fits a saturating power law ``y(n) = a - b * n**(-c)`` with
  :func:`scipy.optimize.curve_fit` under bounds (``0 <= a <= a_max``, ``b >= 0``, ``c`` in
  :data:`C_BOUNDS`), and falls back to the log-linear ``y(n) = a + b * log(n)`` (least squares) when there
  are fewer than 3 points or the power law cannot be fitted; :attr:`CurveFit.note` says why.
* :func:`bootstrap_curve` refits the same model to every bootstrap resample of the scores (rows of a
  ``(resamples, points)`` array, the resamples shared by all points) and gives percentile intervals of
  the predictions.
* :func:`holdout_check` validates the method: fit on every point but the largest, predict the largest,
  and say whether the prediction falls inside the interval of the measured value.
* :func:`analyse_learning_curve` does all three, plus the prediction at ``factor`` times the labels.

Predictions (points, intervals, the hold-out check) are clipped to the score's range ``[0, a_max]``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

log = logging.getLogger(__name__)

#: The curve models, by name.
MODELS = ("power_law", "log_linear")
#: Bounds of the power law's exponent ``c``: below, the curve is a log-linear one in disguise (``b`` and
#: ``a`` grow without bound); above, it saturates within a few labels, which no learning curve does.
C_BOUNDS = (1e-3, 3.0)


def power_law(n: np.ndarray | float, a: float, b: float, c: float) -> np.ndarray:
    """``a - b * n**(-c)``: rises towards the asymptote ``a`` as ``n`` grows (for ``b, c > 0``).

    >>> round(float(power_law(100.0, 0.8, 2.0, 0.5)), 6)
    0.6
    """
    return a - b * np.power(np.asarray(n, np.float64), -c)


def log_linear(n: np.ndarray | float, a: float, b: float) -> np.ndarray:
    """``a + b * log(n)`` (natural log).

    >>> round(float(log_linear(np.e, 0.1, 0.2)), 6)
    0.3
    """
    return a + b * np.log(np.asarray(n, np.float64))


@dataclass(frozen=True)
class CurveFit:
    """A fitted learning curve.

    Attributes
    ----------
    model : {"power_law", "log_linear"}
    params : dict
        ``a``, ``b``, ``c`` (power law) or ``a``, ``b`` (log-linear), for ``n`` in the units it was fitted
        on (images or objects, not normalised).
    note : str or None
        Why the log-linear fallback was used (None for a power law, or a log-linear fit asked for).
    rmse : float
        Root-mean-square residual of the fit on its points.
    """

    model: str
    params: dict[str, float]
    note: str | None = None
    rmse: float = float("nan")

    def predict(self, n: np.ndarray | Sequence[float] | float) -> np.ndarray:
        """The curve at ``n`` (float64 array of ``n``'s shape)."""
        fn = power_law if self.model == "power_law" else log_linear
        return np.asarray(fn(np.asarray(n, np.float64), **self.params), np.float64)

    @property
    def formula(self) -> str:
        p = self.params
        if self.model == "power_law":
            return f"mAP(n) = {p['a']:.4g} - {p['b']:.4g} * n^(-{p['c']:.4g})"
        return f"mAP(n) = {p['a']:.4g} + {p['b']:.4g} * log(n)"

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "params": dict(self.params),
            "formula": self.formula,
            "rmse": self.rmse,
            "note": self.note,
        }


def _check_points(n, y) -> tuple[np.ndarray, np.ndarray]:
    n = np.asarray(n, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    if n.shape != y.shape:
        raise ValueError(f"n and y need the same length, got {n.size} and {y.size}")
    if not np.all(np.isfinite(n)) or np.any(n <= 0):
        raise ValueError(f"n must be positive and finite (numbers of labels), got {n.tolist()}")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"y must be finite, got {y.tolist()}")
    if np.unique(n).size < 2:
        raise ValueError(
            f"a learning curve needs at least 2 different numbers of labels, got n={n.tolist()}; "
            "train on more fractions of the data"
        )
    return n, y


def _fit_log_linear(n: np.ndarray, y: np.ndarray, note: str | None) -> CurveFit:
    b, a = np.polyfit(np.log(n), y, 1)
    params = {"a": float(a), "b": float(b)}
    rmse = float(np.sqrt(np.mean((log_linear(n, **params) - y) ** 2)))
    return CurveFit("log_linear", params, note, rmse)


def _fit_power_law(n: np.ndarray, y: np.ndarray, a_max: float) -> CurveFit:
    """Least squares under bounds, on ``x = n / max(n)`` (well scaled); several starting exponents, the
    best kept. Raises RuntimeError / ValueError when no start converges to finite parameters."""
    n_ref = float(n.max())
    x = n / n_ref
    y_top = float(y[np.argmax(n)])
    a0 = float(np.clip(max(y.max(), 0.0) + 0.05 * max(y.max() - y.min(), 0.01), 0.0, a_max))
    lower, upper = [0.0, 0.0, C_BOUNDS[0]], [a_max, np.inf, C_BOUNDS[1]]
    best: tuple[float, np.ndarray] | None = None
    errors = []
    for c0 in (0.3, 0.7, 1.5):
        p0 = [a0, max(a0 - y_top, 1e-3), c0]
        try:
            with warnings.catch_warnings():
                # 3 points and 3 parameters: an exact fit whose covariance is undefined, which is fine here
                warnings.simplefilter("ignore", OptimizeWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                p, _ = curve_fit(power_law, x, y, p0=p0, bounds=(lower, upper), maxfev=20000)
        except (RuntimeError, ValueError) as e:
            errors.append(str(e))
            continue
        if not np.all(np.isfinite(p)):
            errors.append(f"non-finite parameters {p.tolist()}")
            continue
        sse = float(np.sum((power_law(x, *p) - y) ** 2))
        if best is None or sse < best[0]:
            best = (sse, p)
        if sse <= 1e-20 * n.size:  # an exact fit (e.g. 3 points): no start can do better
            break
    if best is None:
        raise RuntimeError("; ".join(errors) or "no start converged")
    sse, (a, b_x, c) = best
    # y = a - b_x * (n / n_ref)^-c = a - (b_x * n_ref^c) * n^-c
    params = {"a": float(a), "b": float(b_x * n_ref**c), "c": float(c)}
    return CurveFit("power_law", params, None, float(np.sqrt(sse / n.size)))


def fit_learning_curve(
    n: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    *,
    model: str = "auto",
    a_max: float = 1.0,
) -> CurveFit:
    """Fit a learning curve to scores ``y`` measured with ``n`` labels.

    Parameters
    ----------
    n : array of float, shape (k,)
        Numbers of labelled images (or objects), positive; at least 2 different values.
    y : array of float, shape (k,)
        The score of each point (e.g. val segm mAP, in [0, 1]).
    model : {"auto", "power_law", "log_linear"}
        ``auto``: the power law when there are at least 3 points and it can be fitted, else log-linear.
        ``power_law`` forces it (raises if it cannot be fitted); ``log_linear`` skips it.
    a_max : float
        Upper bound of the power law's asymptote (1 for mAP).

    Returns
    -------
    CurveFit

    Raises
    ------
    ValueError
        Fewer than 2 different ``n``, non-positive ``n``, non-finite values, an unknown model, or
        ``model="power_law"`` with fewer than 3 points.
    RuntimeError
        ``model="power_law"`` and the fit does not converge.

    Examples
    --------
    >>> n = np.array([50.0, 100, 200, 400])
    >>> f = fit_learning_curve(n, power_law(n, 0.7, 1.5, 0.6))
    >>> f.model, round(f.params["a"], 3), round(f.params["c"], 3)
    ('power_law', 0.7, 0.6)
    >>> fit_learning_curve([100, 200], [0.3, 0.4]).model
    'log_linear'
    """
    if model not in ("auto", *MODELS):
        raise ValueError(f"model must be 'auto' or one of {MODELS}, got {model!r}")
    n, y = _check_points(n, y)
    if model == "log_linear":
        return _fit_log_linear(n, y, None)
    if n.size < 3:
        if model == "power_law":
            raise ValueError(f"a power law (3 parameters) needs at least 3 points, got {n.size}")
        return _fit_log_linear(n, y, f"{n.size} points: too few for the 3-parameter power law")
    try:
        return _fit_power_law(n, y, a_max)
    except (RuntimeError, ValueError) as e:
        if model == "power_law":
            raise RuntimeError(f"the power law could not be fitted: {e}") from None
        log.info("power-law fit failed (%s); using the log-linear fit", e)
        return _fit_log_linear(n, y, f"the power-law fit failed: {e}")


def _bounded(fit: CurveFit, at, a_max: float) -> np.ndarray:
    """The fit's predictions clipped to the score's range ``[0, a_max]`` (a log-linear curve is unbounded)."""
    return np.clip(fit.predict(at), 0.0, a_max)


def _percentiles(values: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.percentile(values, [50 * (1 - confidence), 50 * (1 + confidence)], axis=0)
    return lo, hi


@dataclass
class CurveBootstrap:
    """Bootstrap distribution of a curve's predictions.

    Attributes
    ----------
    at : array (m,)
        Where the curve was predicted.
    predictions : array (used, m)
        One row per resample whose fit succeeded.
    resamples, failed : int
        Resamples given; resamples left out (a missing score, or the model could not be fitted).
    """

    at: np.ndarray
    predictions: np.ndarray
    resamples: int
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    def interval(self, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """Percentile interval of the predictions at each ``at`` (NaN where no resample was usable)."""
        if self.predictions.shape[0] == 0:
            nan = np.full(self.at.shape, np.nan)
            return nan, nan.copy()
        return _percentiles(self.predictions, confidence)


def bootstrap_curve(
    n: Sequence[float] | np.ndarray,
    y_resamples: np.ndarray,
    *,
    model: str,
    at: Sequence[float] | np.ndarray,
    a_max: float = 1.0,
) -> CurveBootstrap:
    """Refit ``model`` to every bootstrap resample of the scores and predict each at ``at``.

    Parameters
    ----------
    n : array (k,)
        The points' numbers of labels.
    y_resamples : array (B, k)
        Row ``r``: the score of every point on the ``r``-th resample of the evaluation images (the same
        images for every point: the resamples are paired). NaN marks a score that could not be computed;
        such rows are left out.
    model : {"power_law", "log_linear"}
        The model of the point estimate, refitted as it is (no fallback, so that the interval describes
        one model); resamples where it cannot be fitted are counted in ``failed``.
    at : array (m,)
        Where to predict.
    """
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    n = np.asarray(n, np.float64).ravel()
    at = np.asarray(at, np.float64).ravel()
    ys = np.asarray(y_resamples, np.float64)
    if ys.ndim != 2 or ys.shape[1] != n.size:
        raise ValueError(f"y_resamples must have shape (resamples, {n.size}), got {ys.shape}")
    rows, failed, errors = [], 0, []
    for y in ys:
        if not np.all(np.isfinite(y)):
            failed += 1
            continue
        try:
            rows.append(_bounded(fit_learning_curve(n, y, model=model, a_max=a_max), at, a_max))
        except (RuntimeError, ValueError) as e:
            failed += 1
            if len(errors) < 3:
                errors.append(str(e))
    preds = np.asarray(rows, np.float64).reshape(len(rows), at.size)
    return CurveBootstrap(at, preds, resamples=int(ys.shape[0]), failed=failed, errors=errors)


def _interval_dict(value: float, lo: float, hi: float) -> dict:
    def f(v):
        return None if v is None or not np.isfinite(v) else float(v)

    return {"mAP": f(value), "ci_low": f(lo), "ci_high": f(hi)}


def holdout_check(
    n: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    y_resamples: np.ndarray | None = None,
    *,
    confidence: float = 0.95,
    a_max: float = 1.0,
) -> dict:
    """Validate the extrapolation: fit on every point but the largest ``n``, predict the largest.

    Parameters
    ----------
    n, y : arrays (k,), k >= 3
    y_resamples : array (B, k), optional
        Paired bootstrap resamples of ``y`` (see :func:`bootstrap_curve`): they give the interval of the
        measured value at the largest ``n`` and of the prediction.

    Returns
    -------
    dict
        ``n`` (the held-out number of labels), ``fit`` (:meth:`CurveFit.to_dict` of the fit on the others),
        ``predicted`` and ``measured`` (each ``mAP``, ``ci_low``, ``ci_high``), ``error`` (predicted minus
        measured), ``within_interval`` (the prediction lies inside the measured value's interval; None
        without resamples) and ``measured_in_prediction_interval``.

    Raises
    ------
    ValueError
        Fewer than 3 points (the fit on the others needs 2).
    """
    n, y = _check_points(n, y)
    if n.size < 3:
        raise ValueError(f"the hold-out check needs at least 3 points (2 to fit, 1 to check), got {n.size}")
    order = np.argsort(n, kind="stable")
    n, y = n[order], y[order]
    keep = slice(0, n.size - 1)
    fit = fit_learning_curve(n[keep], y[keep], a_max=a_max)
    predicted = float(_bounded(fit, n[-1], a_max))
    measured = float(y[-1])
    out = {
        "n": float(n[-1]),
        "fit": fit.to_dict(),
        "predicted": _interval_dict(predicted, np.nan, np.nan),
        "measured": _interval_dict(measured, np.nan, np.nan),
        "error": predicted - measured,
        "within_interval": None,
        "measured_in_prediction_interval": None,
        "confidence": confidence,
    }
    if y_resamples is not None:
        ys = np.asarray(y_resamples, np.float64)[:, order]
        m_vals = ys[:, -1][np.isfinite(ys[:, -1])]
        if m_vals.size:
            m_lo, m_hi = _percentiles(m_vals, confidence)
            out["measured"] = _interval_dict(measured, m_lo, m_hi)
            out["within_interval"] = bool(m_lo <= predicted <= m_hi)
        boot = bootstrap_curve(n[keep], ys[:, keep], model=fit.model, at=[n[-1]], a_max=a_max)
        p_lo, p_hi = boot.interval(confidence)
        out["predicted"] = _interval_dict(predicted, p_lo[0], p_hi[0])
        if np.isfinite(p_lo[0]):
            out["measured_in_prediction_interval"] = bool(p_lo[0] <= measured <= p_hi[0])
        out["resamples_used"] = int(boot.predictions.shape[0])
    return out


def analyse_learning_curve(
    n: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    y_resamples: np.ndarray | None = None,
    *,
    factor: float = 2.0,
    confidence: float = 0.95,
    grid: int = 60,
    a_max: float = 1.0,
) -> dict:
    """Fit, bootstrap and extrapolate a learning curve; the hold-out check when there are >= 3 points.

    Parameters
    ----------
    n, y : arrays (k,)
        Numbers of labels and the measured score of each.
    y_resamples : array (B, k), optional
        Paired bootstrap resamples of the scores; without them no interval is given.
    factor : float
        Predict at ``factor * max(n)`` (2: twice the labels of the largest run).
    confidence : float
        Of the percentile intervals.
    grid : int
        Points of the curve drawn from ``min(n)`` to ``factor * max(n)`` (log-spaced).

    Returns
    -------
    dict
        ``fit`` (:meth:`CurveFit.to_dict`), ``points`` (each ``n``, measured ``mAP`` with its interval,
        ``predicted`` by the fit with its interval), ``prediction`` (at ``factor * max(n)``: ``n``,
        ``factor``, ``mAP``, ``ci_low``, ``ci_high``, ``gain`` over the largest measured point, and
        ``curve_gain``: the curve at ``factor * max(n)`` minus the curve at ``max(n)``, what the labels add
        by the curve, with ``curve_gain_ci``, its interval over the refits of the resamples),
        ``curve`` (``n``, ``mAP``, ``ci_low``, ``ci_high`` lists on the grid), ``bootstrap``
        (``resamples``, ``used``, ``confidence``) and ``holdout_check`` (see :func:`holdout_check`; a dict
        with ``skipped`` when there are fewer than 3 points).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if not factor > 0:
        raise ValueError(f"factor must be positive, got {factor!r}")
    n, y = _check_points(n, y)
    order = np.argsort(n, kind="stable")
    n, y = n[order], y[order]
    ys = None if y_resamples is None else np.asarray(y_resamples, np.float64)[:, order]
    fit = fit_learning_curve(n, y, a_max=a_max)
    target = float(factor * n[-1])
    curve_n = np.geomspace(n[0], max(target, n[-1]), max(int(grid), 2))
    at = np.concatenate([n, [target], curve_n])
    point = _bounded(fit, at, a_max)
    lo = hi = np.full(at.shape, np.nan)
    used, failed = 0, 0
    m_lo = m_hi = np.full(n.shape, np.nan)
    g_lo = g_hi = np.nan
    if ys is not None:
        boot = bootstrap_curve(n, ys, model=fit.model, at=at, a_max=a_max)
        lo, hi = boot.interval(confidence)
        if boot.predictions.shape[0]:  # the curve's own gain from the largest run to factor x its labels
            g_lo, g_hi = _percentiles(
                boot.predictions[:, n.size] - boot.predictions[:, n.size - 1], confidence
            )
        used, failed = int(boot.predictions.shape[0]), boot.failed
        if boot.errors:
            log.info("%d bootstrap refits failed, e.g. %s", boot.failed, boot.errors[0])
        finite = np.all(np.isfinite(ys), axis=1)
        if finite.any():
            m_lo, m_hi = _percentiles(ys[finite], confidence)
    k = n.size
    points = [
        {
            "n": float(n[i]),
            "measured": _interval_dict(y[i], m_lo[i], m_hi[i]),
            "predicted": _interval_dict(point[i], lo[i], hi[i]),
        }
        for i in range(k)
    ]
    pred = _interval_dict(point[k], lo[k], hi[k])
    out = {
        "fit": fit.to_dict(),
        "points": points,
        "prediction": {
            "n": target,
            "factor": float(factor),
            **pred,
            "gain": float(point[k] - y[-1]),
            "curve_gain": float(point[k] - point[k - 1]),
            "curve_gain_ci": None if not np.isfinite(g_lo) else [float(g_lo), float(g_hi)],
        },
        "curve": {
            "n": curve_n.tolist(),
            "mAP": point[k + 1 :].tolist(),
            "ci_low": [None if not np.isfinite(v) else float(v) for v in lo[k + 1 :]],
            "ci_high": [None if not np.isfinite(v) else float(v) for v in hi[k + 1 :]],
        },
        "bootstrap": {
            "resamples": 0 if ys is None else int(ys.shape[0]),
            "used": used,
            "failed": failed,
            "confidence": confidence,
        },
    }
    if k >= 3:
        out["holdout_check"] = holdout_check(n, y, ys, confidence=confidence, a_max=a_max)
    else:
        out["holdout_check"] = {"skipped": f"needs at least 3 fractions, got {k}"}
    return out
