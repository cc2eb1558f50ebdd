from rtml.cli import app

app(prog_name="rtml")
