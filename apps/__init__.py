"""Thin command-line apps: parse arguments, call a plugin or the core, print and plot results."""
