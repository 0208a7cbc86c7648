"""Layer 6, ``cert``: certificates. Building and writing them (:mod:`~ibtest.cert.certificate`,
:mod:`~ibtest.cert.witness_cert`), their file schema (:mod:`~ibtest.cert.schema`), replaying
them by the registry's rules (:mod:`~ibtest.cert.replay`, ``ibtest verify``) and shrinking
them (:mod:`~ibtest.cert.shrink`). Imports every layer below."""
