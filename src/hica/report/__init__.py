"""Run outputs: tables (Markdown, CSV, JSON) and plots."""
