"""Local development stack: a single-node Kafka broker, a Redis server and a scripted LLM.

Each piece runs as a detached process with a pid file in its data directory, so a stack
started by one process (``dev up``, a test session, a benchmark) can be stopped by another.
"""
