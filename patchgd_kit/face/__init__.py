"""The face: what the notebooks show, figures (``viz``, ``schematic``, ``curves``), controls (``widgets``),
README's profile table (``profile_times``), and the teaching notebooks' helpers (``teaching``)."""
