"""Quality benchmark suite: accuracy and cost of WiM against long-context reading, WiM ablations and LlamaIndex peers.

Run with `python -m benchmarks run --preset quick` and `python -m benchmarks report` (see docs/benchmarks.md).
"""
