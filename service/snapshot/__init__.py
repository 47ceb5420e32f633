"""Snapshots: the immutable running list with its rendered body, and the job and single-flight scan that replace it."""
