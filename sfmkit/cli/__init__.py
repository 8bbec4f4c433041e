"""Typer command-line interface: thin wrappers that turn options into stage calls."""
