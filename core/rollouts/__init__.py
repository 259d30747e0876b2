"""Staged rollouts of catalog model versions to device cohorts (issue 20): the records, the pure
rules (bucketing, cohorts, gates), the store interface and its adapters, and the services."""
