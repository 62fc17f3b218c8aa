"""Command-line tools: bags, plots, checkpoint import, launch runner, demo and evaluation."""
