"""Daily cash-demand forecasting per device: candidates, backtests, selection, quantiles, sample paths."""

from forecasting.forecaster import CashForecaster, TrainResult, score_window, train
from forecasting.metrics import bias, coverage, mase, smape, wape

__all__ = ["CashForecaster", "TrainResult", "bias", "coverage", "mase", "score_window", "smape", "train", "wape"]
