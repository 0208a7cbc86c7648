"""Built-in datasets: every module here registers its own ``ibtest_datasets`` hook."""
