"""SOLLOL's llama.cpp backend: models split by layers over ``rpc-server`` workers under a
``llama-server`` coordinator that SOLLOL starts, supervises and reuses; and plain ``llama-server``
endpoints as whole-model nodes."""
