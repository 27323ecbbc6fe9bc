"""The known-answer world and the small model trained on it: ground truth for the instrument (docs/measurement.md, "Known-answer world")."""
