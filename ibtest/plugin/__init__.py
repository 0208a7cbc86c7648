"""Layer 1, ``plugin``: the plugin API. Spec objects (:mod:`~ibtest.plugin.specs`), hook
specifications (:mod:`~ibtest.plugin.hookspecs`) and the plugin manager / registry
(:mod:`~ibtest.plugin.manager`). Imports only :mod:`ibtest.base`."""
