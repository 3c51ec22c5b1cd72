"""Aggregation of finished runs into one report: ``aggregate`` reads the runs, ``tables`` makes
the text tables (report.md and the terminal), ``figures`` draws the PNGs."""
