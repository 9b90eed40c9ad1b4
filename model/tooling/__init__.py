"""Tools around a model: benchmarks, profiles, the KV-cache study, pulling reference models."""
