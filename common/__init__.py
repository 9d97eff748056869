"""What both programs share: the contract between them, and both backends.

What lives here: the wire format (`schemas`), the backend contract (`backend`), settings and
their defaults (`settings`, `defaults`), the project's errors (`errors`), the clock (`clock`),
logging set-up (`logs`), the task-event schema and emitter (`events`), the two backends
(`local/`, `rabbitmq/`, with RabbitMQ's admin, event listener and management client), and
`factory`, the only constructor of backends: every program, lesson and bench tool opens its
backend, event listener or queue counter there. `cli` (and `options`, until it merges into
`cli`) holds the command-line pieces both programs use.

What it may import: the standard library, pydantic and its own modules, in layers: `factory`
above the backends, the backends above the contract, the two backends not each other. pika
only inside `rabbitmq/` (and `settings`' URL check); typer and rich only in `cli` (and
`options`). Never `consumer`, `producer`, `lessons` or `bench`. pyproject.toml's
[tool.importlinter] contracts hold all this (tests/test_layers.py runs them).
"""
