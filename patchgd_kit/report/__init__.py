"""The report floor: measured rows and the paper's orderings (``orderings``), latency and speed
(``latency``), the tables and REPORT.md (``tables``) and Figure 2 (``figure``)."""
