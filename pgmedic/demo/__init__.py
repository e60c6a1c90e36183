"""The demo and test harness: throwaway clusters, the whole chain on loopback, drills.

It sits apart from the core on purpose: it uses test-only settings (fsync off, trust authentication)
that must never reach a real instance. The core (config, instance model, actions, journal) and the
services never import it; the CLI's `demo` verb, the tests and the benchmarks do.
"""
