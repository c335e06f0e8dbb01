"""The paper floor: the paper's numbers (``numbers``: Figure 2, Tables 1-6) and the rows not in the paper
(``beyond``: GD's alternatives, Streaming SGD). Imports nothing of the kit but itself."""
