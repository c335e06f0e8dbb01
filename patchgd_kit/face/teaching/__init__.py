"""What notebooks 02-04 teach with: one batch of Algorithm 1 watched with hooks (``watch``), the
teaching runs of 03 and 04 (``notebook_runs``) and the memory wall measured (``wall``)."""
