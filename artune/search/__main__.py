from artune.search.cli import cli

cli()
