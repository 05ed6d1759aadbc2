"""A small Django project using celeryflow as a Django team would (tests/test_django.py)."""

# Django's Celery layout: the app is loaded when Django starts.
from .celery import app as celery_app

__all__ = ["celery_app"]
