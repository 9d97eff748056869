"""`consumer` and `python -m consumer` start here: the command line is imported inside
`main`, for the reason given in `producer.__main__`."""


def main() -> None:
    from consumer.cli import cli

    cli()


if __name__ == "__main__":
    main()
