"""The reproduction: a paper table's rows as runs (``tableruns.run_table``) and every numbered notebook
headless with papermill, then REPORT.md (``notebooks.reproduce``)."""
