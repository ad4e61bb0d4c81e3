"""``GET /v1/audit/product/{product_id}``: the chain of custody of a collection, lot or bag."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import get
from litestar.di import NamedDependency
from litestar.params import PathParameter

from ..service import CourseService
from .auth import AUDITORS
from .problems import ProductNotFoundError, problem_responses

Svc = NamedDependency[CourseService]


@get(
    "/v1/audit/product/{product_id:str}",
    opt={"roles": AUDITORS, "audit": True},
    sync_to_thread=True,
    responses=problem_responses(404),
    summary="The chain of custody of a collection (ISBT 128 DIN or site id), a lot or a bag",
    tags=["audit"],
)
def get_product_chain(
    service: Svc, product_id: Annotated[str, PathParameter(min_length=1, max_length=200)]
) -> dict[str, Any]:
    from ..audit.log import streams
    from ..audit.product import chain_of_custody

    chain = chain_of_custody(product_id, streams(service.log))
    if chain is None:
        raise ProductNotFoundError(f"no collection, lot or bag {product_id!r} is on record")
    return chain


ROUTES = [get_product_chain]
