from gradschool.cli import app

app()
