from selectune.evaluate.metrics import classification_metrics, regression_metrics, majority_baseline, HIGHER_IS_BETTER

__all__ = ["classification_metrics", "regression_metrics", "majority_baseline", "HIGHER_IS_BETTER"]
