"""The yardstick for ``bench.api_baseline``: ``GET /studies/{name}`` as a minimal FastAPI app.

One indexed token SELECT and one query for the study's row, its counts and its best trial, on
our tables; no limits, no spec validation. ``HPO_DATABASE_URL`` names the database.
"""

import hashlib
import os
from typing import Annotated, Any

from fastapi import FastAPI, Header, HTTPException
from sqlalchemy import create_engine, text

engine = create_engine(os.environ["HPO_DATABASE_URL"], pool_pre_ping=True, pool_size=15)
app = FastAPI()
OWNER = text(
    "SELECT owner FROM hpo_tokens WHERE token_hash = :h AND revoked_at IS NULL"
    " AND (expires_at IS NULL OR expires_at > now())"
)
STUDY = text("""
SELECT r.name, r.owner, r.status, r.status_reason, r.created_at, r.updated_at, r.spec,
       c.complete, c.pruned, c.fail, c.running, c.waiting, b.number AS best_trial,
       b.value AS best_value
FROM hpo_studies r JOIN studies s ON s.study_name = r.name
CROSS JOIN LATERAL (SELECT count(*) FILTER (WHERE state = 'COMPLETE') AS complete,
    count(*) FILTER (WHERE state = 'PRUNED') AS pruned, count(*) FILTER (WHERE state = 'FAIL')
    AS fail, count(*) FILTER (WHERE state = 'RUNNING') AS running,
    count(*) FILTER (WHERE state = 'WAITING') AS waiting FROM trials t
    WHERE t.study_id = s.study_id) c
LEFT JOIN LATERAL (SELECT t.number, v.value FROM trials t JOIN trial_values v USING (trial_id)
    WHERE t.study_id = s.study_id AND t.state = 'COMPLETE' ORDER BY v.value LIMIT 1) b ON true
WHERE r.name = :name AND r.owner = :owner""")


@app.get("/studies/{name}")
def get_study(name: str, authorization: Annotated[str, Header()] = "") -> dict[str, Any]:
    token = hashlib.sha256(authorization.removeprefix("Bearer ").encode()).hexdigest()
    with engine.connect() as conn:
        owner = conn.scalar(OWNER, {"h": token})
        if owner is None:
            raise HTTPException(401, "invalid token")
        row = conn.execute(STUDY, {"name": name, "owner": owner}).mappings().first()
    if row is None:
        raise HTTPException(404, "not found")
    return dict(row)
