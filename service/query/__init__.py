"""Queries of a snapshot and of the history: parse, select, project, render, cache."""
