"""HW04-Bench: learning curves recorded once, any search strategy replayed against them on a CPU.

The HPO field's way to compare search strategies without paying for each comparison in GPU time (LCBench,
HPOBench, YAHPO Gym): train many configurations of the search space once, unpruned, keeping each one's
validation curve and costs; then replay a strategy against the table with a simulated clock, many times.

- ``configs``: which configurations a table holds (the warm starts, then a scrambled Sobol sequence over the
  space's own parameters, conditions respected), fixed by a seed.
- ``record``: trains them with the search's own training code and settings and appends one JSON line per run;
  a recorder stopped by a time limit goes on where it stopped.
- ``table``: reads a table back.
"""
