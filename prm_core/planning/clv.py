"""Predicted lifetime value and churn risk: BG/NBD with Gamma-Gamma.

The BG/NBD model (Fader, Hardie & Lee 2005, "Counting Your Customers the Easy Way") says
each customer buys as a Poisson process with rate lambda ~ Gamma(r, alpha) while alive, and
after every purchase drops out with probability p ~ Beta(a, b). From a customer's
frequency ``x`` (repeat purchases), recency ``t_x`` (first to last purchase) and age ``T``
(first purchase to now), in days, it gives the expected purchases in the next ``t`` days
and P(alive). The Gamma-Gamma model (Fader & Hardie 2013, "The Gamma-Gamma Model of
Monetary Value") gives the expected spend per purchase from the customer's ``x`` purchases
with mean value ``m``: ``p (v + x m) / (p x + q - 1)``.

Both are fitted by maximum likelihood with scipy on the closed-form log-likelihoods of
those papers (the equations the `lifetimes` package used). `lifetimes` is unmaintained
since 2020, `btyd` pulls PyMC 4 and Aesara (about 40 packages), and `pymc-marketing` needs
PyMC and PyTensor, which compile models for minutes on this project's two-core machines;
scipy is maintained, already a wheel everywhere, and fits 100,000 customers in seconds.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from attrs import frozen

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import ArrayLike

__all__ = ["PLANNING_MISSING", "BgNbd", "GammaGamma", "fit_bgnbd", "fit_gamma_gamma", "science_installed"]

# numpy and scipy come with the `planning` extra (prm-hub installs them): the core imports
# them only where a model is fitted or used, so a hub without them runs, without predictions
PLANNING_MISSING = "numpy and scipy are not installed (pip install 'prm-hub[planning]')"


def science_installed() -> bool:
    """Whether numpy and scipy can be imported (without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in ("numpy", "scipy"))


@frozen
class BgNbd:
    """Fitted BG/NBD parameters (time in days)."""

    r: float
    alpha: float
    a: float
    b: float
    # the largest lifetime value the fit supports (the 99th percentile of its own predictions
    # over the customers it was fitted on; prm_core.planning.fit): predictions stop there
    cap: float | None = None

    def p_alive(self, x: float, t_x: float, T: float) -> float:
        """P(the customer is still active | x repeat purchases, last at t_x, age T)."""
        if x == 0:
            return 1.0
        import numpy as np

        ratio = np.exp((self.r + x) * (np.log(self.alpha + T) - np.log(self.alpha + t_x)))
        return float(1.0 / (1.0 + self.a / (self.b + x - 1) * ratio))

    def expected_purchases(self, t: float, x: float, t_x: float, T: float) -> float:
        """Expected purchases in the next ``t`` days (FHL 2005, equation 10)."""
        from scipy.special import hyp2f1

        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        z = t / (alpha + T + t)
        head = (a + b + x - 1) / (a - 1)
        tail = 1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp2f1(r + x, b + x, a + b + x - 1, z)
        denominator = 1.0
        if x > 0:
            denominator += a / (b + x - 1) * ((alpha + T) / (alpha + t_x)) ** (r + x)
        return float(head * tail / denominator)

    def to_json(self) -> dict[str, float]:
        return {"r": self.r, "alpha": self.alpha, "a": self.a, "b": self.b}


@frozen
class GammaGamma:
    """Fitted Gamma-Gamma parameters of the spend per purchase."""

    p: float
    q: float
    v: float

    def expected_spend(self, x: float, m: float) -> float:
        """Expected value of a purchase of a customer with ``x`` purchases averaging ``m``."""
        return float(self.p * (self.v + x * m) / (self.p * x + self.q - 1))

    def to_json(self) -> dict[str, float]:
        return {"p": self.p, "q": self.q, "v": self.v}


def _bgnbd_nll(log_params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> float:
    import numpy as np
    from scipy.special import gammaln

    r, alpha, a, b = np.exp(log_params)
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = gammaln(a + b) + gammaln(b + x) - gammaln(b) - gammaln(a + b + x)
    a3 = -(r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore", invalid="ignore"):
        a4 = np.where(x > 0, np.log(a) - np.log(np.maximum(b + x - 1, 1e-12)) - (r + x) * np.log(alpha + t_x), -np.inf)
    ll = a1 + a2 + np.logaddexp(a3, a4)
    return float(-ll.sum())


def fit_bgnbd(x: ArrayLike, t_x: ArrayLike, T: ArrayLike) -> BgNbd:
    """Maximum-likelihood BG/NBD parameters from per-customer (x, t_x, T) in days."""
    import numpy as np
    from scipy.optimize import minimize

    xs, txs, Ts = (np.asarray(v, dtype=float) for v in (x, t_x, T))
    if len(xs) < 10:
        raise ValueError(f"BG/NBD needs at least 10 customers with a purchase, got {len(xs)}")
    start = np.log([1.0, max(float(Ts.mean()), 1.0), 1.0, 1.0])
    result = minimize(_bgnbd_nll, start, args=(xs, txs, Ts), method="Nelder-Mead", options={"maxiter": 4000})
    _converged("BG/NBD", result)
    r, alpha, a, b = (float(v) for v in np.exp(result.x))
    return BgNbd(r, alpha, a, b)


def _converged(name: str, result: Any) -> None:
    """Refuse a fit the optimizer did not finish, or that lands on no finite parameters: its
    predictions would be whatever the last step happened to be."""
    import numpy as np

    if not result.success or not np.all(np.isfinite(result.x)) or not np.isfinite(result.fun):
        raise ValueError(f"{name} did not converge after {result.nit} iterations ({result.message})")


def _gg_nll(log_params: np.ndarray, x: np.ndarray, m: np.ndarray) -> float:
    import numpy as np
    from scipy.special import gammaln

    p, q, v = np.exp(log_params)
    ll = (
        gammaln(p * x + q)
        - gammaln(p * x)
        - gammaln(q)
        + q * np.log(v)
        + (p * x - 1) * np.log(m)
        + p * x * np.log(x)
        - (p * x + q) * np.log(x * m + v)
    )
    return float(-ll.sum())


def fit_gamma_gamma(x: ArrayLike, m: ArrayLike) -> GammaGamma:
    """Maximum-likelihood Gamma-Gamma parameters from customers with ``x >= 1`` purchases of mean ``m > 0``."""
    import numpy as np
    from scipy.optimize import minimize

    xs, ms = np.asarray(x, dtype=float), np.asarray(m, dtype=float)
    keep = (xs >= 1) & (ms > 0)
    xs, ms = xs[keep], ms[keep]
    if len(xs) < 10:
        raise ValueError(f"Gamma-Gamma needs at least 10 repeat customers, got {len(xs)}")
    start = np.log([1.0, 2.0, max(float(ms.mean()), 1.0)])
    result = minimize(_gg_nll, start, args=(xs, ms), method="Nelder-Mead", options={"maxiter": 4000})
    _converged("Gamma-Gamma", result)
    p, q, v = (float(val) for val in np.exp(result.x))
    return GammaGamma(p, q, v)


def models_from_params(params: Mapping[str, Mapping[str, Any]]) -> tuple[BgNbd | None, GammaGamma | None]:
    """The fitted models stored in ``planning_models`` (either may be missing)."""
    bg = params.get("bgnbd")
    gg = params.get("gammagamma")
    return (
        BgNbd(
            **{k: float(bg[k]) for k in ("r", "alpha", "a", "b")},
            cap=float(bg["clv_p99"]) if bg.get("clv_p99") is not None else None,
        )
        if bg
        else None,
        GammaGamma(**{k: float(gg[k]) for k in ("p", "q", "v")}) if gg else None,
    )
