"""The WSGI entry point: gunicorn wsgi:app, or flask --app wsgi."""

from pdauto import create_app

app = create_app()
