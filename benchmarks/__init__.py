"""Benchmarks of mipro-ray against DSPy 3.x MIPROv2 on a simulated LLM (issue 7).

Run everything with ``python -m benchmarks.run_all`` (see ``benchmarks/README.md``).
"""
