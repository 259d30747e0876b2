"""Onboarding user models from a URI: guarded fetch, artifact checks, the download processor."""
