"""`producer` and `python -m producer` start here.

The console script imports this module, not `producer.cli`: worker processes are started
with spawn, which runs the parent's main script again in each child, so a script that
imported the command line (typer, the options) at the top would make every worker import
it for nothing.
"""


def main() -> None:
    from producer.cli import cli

    cli()


if __name__ == "__main__":
    main()
