"""The metadata of a converted store validates against the JSON Schemas in schemas/."""

import json
from pathlib import Path

import jsonschema
import pytest
import zarr

import vladata

SCHEMAS = Path(__file__).parents[2] / "schemas"


def _schema(name):
    return json.loads((SCHEMAS / name).read_text())


def test_store_attributes_validate(calvin_store):
    attrs = zarr.open_group(calvin_store, mode="r").attrs["vlakit"]
    jsonschema.validate(attrs, _schema("store.schema.json"))


def test_manifest_validates(calvin_store):
    jsonschema.validate(json.loads((calvin_store / "meta/manifest.json").read_text()),
                        _schema("manifest.schema.json"))


@pytest.mark.parametrize("table,defn", [("episodes", "episode"), ("segments", "segment")])
def test_table_rows_validate(calvin_store, table, defn):
    schema = _schema("tables.schema.json")
    rows = getattr(vladata.open(calvin_store), table).to_dicts()
    assert rows
    for row in rows:
        jsonschema.validate(row, {**schema, "$ref": f"#/$defs/{defn}"})


def test_schema_rejects_a_wrong_version(calvin_store):
    attrs = dict(zarr.open_group(calvin_store, mode="r").attrs["vlakit"])
    attrs["format_version"] = 99
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(attrs, _schema("store.schema.json"))
