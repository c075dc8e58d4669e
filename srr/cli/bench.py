"""placeholder"""
import typer

def bench_command() -> None:
    """(not ready yet)"""
    raise typer.Exit(code=1)
