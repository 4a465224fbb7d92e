"""A model and labelled data -> numbers: the evaluation pass, metrics, thresholds, predictions files."""
