"""The GPU check, one feature in one folder: its rows (``rows``), the gpu profile's minutes (``estimate``),
the check itself (``check``: each row through the kit's step, planner, train() or latency; dry on a CPU) and
its report and verdict (``report``)."""
