"""Batch evaluation on video-question datasets: items, dataset loaders, scoring, statistics, runner and report."""
