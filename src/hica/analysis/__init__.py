"""Analyses the method is judged by: robustness, unseen categories, localization, efficiency."""
