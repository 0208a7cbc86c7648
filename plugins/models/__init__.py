"""Built-in models: every module here registers its own ``ibtest_models`` hook."""
