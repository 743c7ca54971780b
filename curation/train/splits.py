"""The splits `curate train` can train on, by name; in a module of their own so that the command's parser needs no pydantic."""

# What `--split` can name. `filtered` and `scored` are the run's own splits; the others are drawn
# from `scored` (curation.train.target), as baselines for the filtered split (results/m49_study.md):
#   random           as many rows as `filtered`, from every row with a trace (unreadable answers included)
#   random-readable  the like-for-like random baseline: from rows whose answer could be read, with the
#                    same count per predicted class as `filtered`, so only the uncertainty ranking differs
#   label-correct    the ground-truth reference: rows whose answer equals the label, the same count per
#                    predicted class as `filtered`. It USES THE LABELS, so it is an upper reference for
#                    what a perfect filter of that size would give, never a label-free curation.
SPLITS = ("filtered", "scored", "random", "random-readable", "label-correct")
LABEL_USING_SPLITS = frozenset({"label-correct"})
