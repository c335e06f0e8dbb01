"""The planner: the peak memory of one training step on fake tensors (``estimate``, counted by
``bytecount``), the batch or k that fits a budget (``budget``), the alternatives' plans (``alternatives``),
the paper's rows planned and shipped (``paperrows``, ``paper_plans.json``) and one step measured in a
fresh process (``measure``). Imports the core and below."""
