"""Dramatiq middleware for Herald's actors."""
