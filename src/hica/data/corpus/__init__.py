"""Domain text corpus for HiCA stage-1 text adaptation (data files; see README.md here)."""
