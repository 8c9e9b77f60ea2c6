"""Trigger conditions: comparisons on the record after a change, and on the change itself.

An automation's conditions are a list of {"field", "op", "value"} mappings, and
all of them must hold. Field comparisons read the record as it was right after
the change (as it was before, for a delete). The change operators read the
event's changes, so they hold only for updates.
"""

from decimal import Decimal, InvalidOperation

from .models import RECORD_CLASSES

FIELD_OPERATORS = {
    "equals": "equals",
    "not_equals": "does not equal",
    "contains": "contains",
    "greater_than": "is greater than",
    "less_than": "is less than",
    "is_empty": "is empty",
}
CHANGE_OPERATORS = {
    "changed": "changed",
    "changed_from": "changed from",
    "changed_to": "changed to",
}
OPERATORS = {**FIELD_OPERATORS, **CHANGE_OPERATORS}
# Operators that compare with a value the user enters.
NEEDS_VALUE = {"equals", "not_equals", "contains", "greater_than", "less_than"} | {
    "changed_from",
    "changed_to",
}
MAX_CONDITIONS = 20
MAX_VALUE_LENGTH = 500


class InvalidConditions(ValueError):
    """Raised with a message for the user when conditions cannot be used."""


def fields_for(model):
    """Return the fields of `model` that conditions may name."""
    return RECORD_CLASSES[model].tracked_fields


def validate_conditions(model, conditions, action="updated"):
    """Return `conditions` cleaned up, or raise InvalidConditions naming the first problem.

    `action` is the trigger's (created, updated or deleted): only an update has
    changes, so the change operators are rejected for the other two.
    """
    if not isinstance(conditions, list):
        raise InvalidConditions("Conditions must be a list.")
    if len(conditions) > MAX_CONDITIONS:
        raise InvalidConditions(f"Use at most {MAX_CONDITIONS} conditions.")
    fields = fields_for(model)
    cleaned = []
    for number, condition in enumerate(conditions, start=1):
        if not isinstance(condition, dict):
            raise InvalidConditions(f"Condition {number} is not a field, operator and value.")
        field = str(condition.get("field") or "").strip()
        operator = str(condition.get("op") or "").strip()
        value = condition.get("value")
        value = "" if value is None else str(value).strip()
        if field not in fields:
            raise InvalidConditions(
                f"Condition {number}: choose one of the {model} fields: {', '.join(fields)}."
            )
        if operator not in OPERATORS:
            raise InvalidConditions(
                f"Condition {number}: choose an operator: {', '.join(OPERATORS)}."
            )
        if operator in CHANGE_OPERATORS and action != "updated":
            raise InvalidConditions(
                f'Condition {number}: "{OPERATORS[operator]}" applies only to updates, and'
                f" this automation runs when a {model} is {action}."
            )
        if operator in ("greater_than", "less_than") and _number(value) is None:
            raise InvalidConditions(f"Condition {number}: enter a number to compare with.")
        if len(value) > MAX_VALUE_LENGTH:
            raise InvalidConditions(
                f"Condition {number}: the value is longer than {MAX_VALUE_LENGTH} characters."
            )
        cleaned.append(
            {"field": field, "op": operator, "value": value if operator in NEEDS_VALUE else ""}
        )
    return cleaned


def conditions_match(conditions, event):
    """Return whether every condition holds for `event`; no conditions always match."""
    return all(_holds(condition, event) for condition in conditions or ())


def describe(condition):
    """Return a condition in words, such as 'status changed to won'."""
    words = OPERATORS.get(condition["op"], condition["op"])
    value = condition.get("value", "")
    return f"{condition['field']} {words} {value}".rstrip()


def _holds(condition, event):
    field, operator, expected = condition["field"], condition["op"], condition.get("value", "")
    changes = event.changes or {}
    if operator in CHANGE_OPERATORS:
        if event.action != "updated" or field not in changes:
            return False
        old, new = changes[field]
        if operator == "changed_from":
            return _equal(old, expected)
        if operator == "changed_to":
            return _equal(new, expected)
        return True

    actual = (event.record or {}).get(field)
    if operator == "is_empty":
        return actual is None or str(actual).strip() == ""
    if operator == "equals":
        return _equal(actual, expected)
    if operator == "not_equals":
        return not _equal(actual, expected)
    if operator == "contains":
        return actual is not None and str(expected).casefold() in str(actual).casefold()
    left, right = _number(actual), _number(expected)
    if left is None or right is None:
        return False
    return left > right if operator == "greater_than" else left < right


def _equal(actual, expected):
    """Compare numbers as numbers and everything else as text, ignoring case."""
    left, right = _number(actual), _number(expected)
    if left is not None and right is not None:
        return left == right
    if actual is None:
        return str(expected).strip() == ""
    return str(actual).strip().casefold() == str(expected).strip().casefold()


def _number(value):
    if value is None or isinstance(value, bool):
        return None
    try:
        number = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None
