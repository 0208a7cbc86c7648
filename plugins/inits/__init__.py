"""Built-in initializations: every module here registers its own ``ibtest_inits`` hook."""
