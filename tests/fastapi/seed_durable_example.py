"""dispatch-py's FastAPI example (seeds/004, "Integration with FastAPI") as written, with
Dispytch names: ``Dispytch(app)`` for ``Dispatch(app)``, ``@dispytch.function`` for
``@dispatch.function``. The one other change is the address ``publish`` posts to
(``SEED_PUBLISH_URL``, a server of the test's on loopback, for ``https://httpstat.us/200``).

The Durable comes from the environment (``DISPYTCH_DURABLE_TRANSPORT``,
``DISPYTCH_DURABLE_STORE``; by default the memory broker and a SQLite file) and its worker
runs beside the app, in the app's lifespan. ``root`` is a sync endpoint: FastAPI runs it in
its threadpool, and ``publish.dispatch(...)`` hands the dispatch to the app's loop.
"""

import os

import requests
from dispytch.fastapi import Dispytch
from fastapi import FastAPI

PUBLISH_URL = os.environ.get("SEED_PUBLISH_URL", "https://httpstat.us/200")

app = FastAPI()
dispytch = Dispytch(app)


@dispytch.function
def publish(url, payload):
    r = requests.post(url, data=payload)
    r.raise_for_status()


@app.get("/")
def root():
    publish.dispatch(PUBLISH_URL, {"hello": "world"})
    return {"answer": 42}
