"""The producer: the job runner (`run`) and its ledger (`ledger`: each task's fate, latency
percentiles), its summary (`output`) and the `producer` command (`cli`).

What it may import: `common` (its backend through `common.factory`), the standard library
and its own dependencies (typer, rich, hdrhistogram). Of the consumer's code, only
`producer.local` imports anything: with the local backend the producer is the parent of its
workers (the seed's model), so it starts them, and it checks a job's kind against the
handlers the workers run; its docstring says so. Never pika, `lessons` or `bench`.
pyproject.toml's [tool.importlinter] contracts hold this.
"""
