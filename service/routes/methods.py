"""Selection methods: what each needs from a store and the options it takes."""

from __future__ import annotations

from fastapi import APIRouter

from gradstore.api_models import MethodPage
from gradstore.service.problems import problem_responses

router = APIRouter(prefix="/v1/methods", tags=["methods"], responses=problem_responses(401))


@router.get("", response_model=MethodPage)
def list_methods():
    """Every registered method: whether a store serves it by default, the model a query
    loads, the store artifacts it reads, and the JSON schema of its ``options``."""
    from gradstore.selection import METHODS, method_requirements

    data = []
    for name, method in sorted(METHODS.items()):
        needs = method_requirements(name)
        data.append(
            {
                "name": name,
                "default": method.default,
                "model": needs.model,
                "artifacts": list(needs.artifacts),
                "options": method.Options.model_json_schema(),
            }
        )
    return {"data": data, "count": len(data)}
