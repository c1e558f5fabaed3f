"""The unit registry: every kind declared once, with a payload model read and written
through it (a payload that does not fit its kind is refused, never read as a bare dict)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gradstore.api_models import DatastoreStatus
from gradstore.db.models import Datastore
from gradstore.db.units import (
    PAYLOADS,
    WORKS_ON,
    ExtendPayload,
    NoPayload,
    PlanPayload,
    UnitKind,
    new_unit,
    payload_of,
    still_wanted,
)
from gradstore.worker.units import UNITS, unit_type


def test_every_kind_is_declared_once_with_its_payload_and_states():
    assert set(UNITS) == set(UnitKind) == set(PAYLOADS) == set(WORKS_ON)
    for kind, unit in UNITS.items():
        assert unit.kind == kind and unit.payload is PAYLOADS[kind]
    with pytest.raises(ValueError, match="unknown unit kind 'bogus'"):
        unit_type("bogus")


def test_unit_kinds_are_no_word_of_the_client_models():
    import gradstore.api_models as api

    assert not hasattr(api, "UnitKind")


def test_payloads_go_through_their_kinds_model():
    unit = new_unit("s", UnitKind.EXTEND, ExtendPayload(methods=["rds"]), plan=3)
    assert unit.payload == {"methods": ["rds"]} and unit.plan == 3
    assert payload_of(unit.kind, unit.payload, ExtendPayload).methods == ["rds"]
    assert new_unit("s", UnitKind.VERIFY).payload is None
    with pytest.raises(TypeError, match="takes a PlanPayload"):
        new_unit("s", UnitKind.ARTIFACT, ExtendPayload(methods=["rds"]))
    with pytest.raises(TypeError, match="is a ExtendPayload, not PlanPayload"):
        payload_of(UnitKind.EXTEND, {"methods": ["rds"]}, PlanPayload)
    with pytest.raises(ValidationError):  # a stray key is refused, not carried along
        payload_of(UnitKind.FINISH, {"artifacts": ["x"], "plan": 2}, PlanPayload)
    with pytest.raises(ValidationError):
        payload_of(UnitKind.EXTEND, {}, ExtendPayload)
    assert payload_of(UnitKind.INDEX, None, NoPayload) == NoPayload()


@pytest.mark.parametrize(
    ("kind", "status", "cancelled", "wanted"),
    [
        (UnitKind.FEATURIZE, DatastoreStatus.FEATURIZE, False, True),
        (UnitKind.FEATURIZE, DatastoreStatus.FEATURIZE, True, False),
        (UnitKind.FEATURIZE, DatastoreStatus.READY, False, False),
        (UnitKind.ARTIFACT, DatastoreStatus.READY, False, True),  # an extension's plan
        (UnitKind.EXTEND, DatastoreStatus.ARTIFACTS, False, False),
        (UnitKind.VERIFY, DatastoreStatus.FAILED, True, True),
        (UnitKind.VERIFY, DatastoreStatus.FEATURIZE, False, False),
    ],
)
def test_which_stores_a_kind_works_on(kind, status, cancelled, wanted):
    store = Datastore(status=status, cancel_requested=cancelled)
    assert still_wanted(store, kind) is wanted
    assert UNITS[kind].still_wanted(store) is wanted
    assert still_wanted(None, kind) is False
