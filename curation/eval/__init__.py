"""Evaluation against labels: `curate eval` on a run folder (run, report), on a fine-tuned adapter (model),
the ranking statistics (ranking), their bootstrap intervals (bootstrap), classification scores through the
`evaluate` library with the metric scripts shipped in metrics/ (classification), and the studies' shared code (study)."""
