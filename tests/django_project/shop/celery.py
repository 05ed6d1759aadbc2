from celery import Celery

from celeryflow import Flow
from celeryflow.django import store_url

app = Celery("shop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# The store lives in Django's default database (celeryflow's cf_* tables beside the
# project's); under pytest-django it follows the test database.
flow = Flow(app, store=store_url("default"), retry_base="200ms")
