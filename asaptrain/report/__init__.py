"""Aggregation of finished runs into one report: ``aggregate`` reads the runs, ``plots`` draws
the tables and figures."""
