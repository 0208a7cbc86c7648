"""Built-in pair constructions: every module here registers its own ``ibtest_constructions`` hook."""
