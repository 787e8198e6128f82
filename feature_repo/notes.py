"""Feast definitions of the note features: entity ``note``, its parquet source, view and service.

The parquet file is written by ``notellm.features.FeatureRepo.write_offline`` from
``notellm.features.build_note_features``; its path is relative to this repository.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, FileSource
from feast.types import Array, Int64, String
from feast.value_type import ValueType

note = Entity(name="note", join_keys=["note_id"], value_type=ValueType.STRING,
              description="A note (title, content, hashtags, category).")

note_features_source = FileSource(
    name="note_features_source",
    path="data/note_features.parquet",
    timestamp_field="event_timestamp",
    description="One row per note and snapshot time (notellm.features.build_note_features).",
)

note_features = FeatureView(
    name="note_features",
    entities=[note],
    ttl=timedelta(0),  # 0: a note's row never expires
    schema=[
        Field(name="title", dtype=String),
        Field(name="content", dtype=String),
        Field(name="category", dtype=String),
        Field(name="hashtags", dtype=Array(String)),
        Field(name="title_length", dtype=Int64, description="characters"),
        Field(name="content_length", dtype=Int64, description="characters"),
        Field(name="hashtag_count", dtype=Int64),
        Field(name="clicks_7d", dtype=Int64, description="clicks in the 7 days up to the row's time"),
        Field(name="clicks_total", dtype=Int64, description="clicks up to the row's time"),
        Field(name="views_7d", dtype=Int64, description="views in the 7 days up to the row's time"),
        Field(name="views_total", dtype=Int64, description="views up to the row's time"),
    ],
    online=True,
    source=note_features_source,
    tags={"owner": "notellm"},
)

note_service = FeatureService(name="note_service", features=[note_features],
                              description="Everything the recommender and the pipeline read about a note.")
