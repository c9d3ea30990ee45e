"""Dataset formats, one module each; every one yields ``Sample`` lists."""
