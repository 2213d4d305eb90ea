"""The deployment id: which deployment (which database) a process serves.

One row in ``deployment``, made by the migration. Two deployments on one Ray cluster name
their runs' actors with it (`falcon_lite.runtime.control.supervisor_name`), so they never
see or control each other's runs. A database whose row was removed gets a new one.
"""

from __future__ import annotations

import uuid

from sqlalchemy import Engine, func, select

from falcon_lite.store.models import Deployment


def deployment_id(engine: Engine) -> str:
    """This database's deployment id (made once; the smallest, should two be made at once)."""
    with engine.begin() as connection:
        found = connection.execute(select(func.min(Deployment.id))).scalar()
        if found is None:
            connection.execute(Deployment.__table__.insert().values(id=uuid.uuid4().hex[:12]))
    if found is None:
        with engine.connect() as connection:
            found = connection.execute(select(func.min(Deployment.id))).scalar()
    return found
