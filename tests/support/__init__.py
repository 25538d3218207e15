"""Helpers and fixtures shared between test modules and tiers (a test module never imports another)."""
