"""Routes under ``/problems``: the registered problems a run may name."""

from __future__ import annotations

from fastapi import APIRouter

from services.api import queries
from services.api.schemas import ProblemsPublic

router = APIRouter(prefix="/problems", tags=["problems"])


@router.get("", summary="The registered problems: parameters and priors, x's shape, observations, reference")
def list_problems() -> ProblemsPublic:
    found = queries.problems()
    return ProblemsPublic(data=found, count=len(found))
