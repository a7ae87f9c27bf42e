"""Wire format of the audit page's own routes (``service.audit_routes``): a user's history with
the items that drove each concept, one concept's page, catalogue title search."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from recsae.concepts import Concept
from service.schemas import MAX_HISTORY


class HistoryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=128, description="a user of the bundle's training data")
    top: int = Field(5, ge=1, le=50, description="items listed per concept (largest attribution first)")


class HistoryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)

    history: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        min_length=1, max_length=MAX_HISTORY, description="item ids, oldest first (as for POST /recommend)")
    top: int = Field(5, ge=1, le=50)


class HistoryItem(BaseModel):
    position: int = Field(description="0 = the oldest item of the history")
    item_id: str
    title: str
    in_window: bool = Field(description="false: older than the window the model reads, so it cannot drive anything")


class ItemAttribution(BaseModel):
    position: int
    item_id: str
    title: str
    attribution: float = Field(description="activation with the item minus without it (leave-one-out), or its "
                               "share by encoder alignment; negative: the item holds the concept back")


class ConceptAttribution(BaseModel):
    latent: int
    activation: float
    label: str | None = Field(None, description="the concept's short name")
    description: str | None = None
    attributions: list[float] = Field(description="per history position, oldest first (0 outside the window)")
    top: list[ItemAttribution] = Field(description="the items that drove it most: removing each lowers it by at least "
                                       "1% of its activation")


class HistoryAttribution(BaseModel):
    user_id: str | None = Field(None, description="null for an explicit history")
    method: Literal["leave-one-out", "encoder-alignment"] = Field(
        description="leave-one-out: each item removed in turn and the history re-encoded (causal, sequential "
        "models); encoder-alignment: the model's user vector is not a function of the history (BPR-MF, "
        "LightGCN), so items are credited by how their embedding aligns with the concept (not causal)")
    window: int = Field(description="how many of the newest items the model reads")
    items: list[HistoryItem] = Field(description="the history, newest first")
    concepts: list[ConceptAttribution] = Field(description="active concepts, strongest first")
    seconds: float = Field(description="time spent computing the attribution")


class ItemQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    q: str = Field(min_length=1, max_length=200, description="words of a title (or an item id)")
    limit: int = Field(10, ge=1, le=50)


class CatalogItem(BaseModel):
    item_id: str
    title: str


class ItemList(BaseModel):
    items: list[CatalogItem]


class DecoderItem(BaseModel):
    item_id: str
    title: str
    weight: float = Field(description="decoder row . item embedding: how much a unit of the concept raises this "
                          "item's score")


class TopUser(BaseModel):
    user_id: str
    activation: float


class PolicyUse(BaseModel):
    name: str
    strength: float
    description: str | None = None


class ConceptDetail(BaseModel):
    concept: Concept = Field(description="the dictionary entry: description, confidence, detection counts, evidence")
    label: str | None = None
    pushes_up: list[DecoderItem] = Field(description="items whose scores it raises most")
    pushes_down: list[DecoderItem] = Field(description="items whose scores it lowers most")
    top_users: list[TopUser] = Field(description="the bundle's users in whom it is strongest")
    users_firing: int = Field(description="bundle users in whom it fires")
    users_total: int
    user_histogram: list[int] = Field(description="activation over the users it fires in: counts over 20 equal bins")
    user_histogram_max: float
    reference_rate: float = Field(description="share of the reference users in which it fires")
    live_rate: float | None = Field(None, description="share of this worker's recent requests; null without traffic")
    live_requests: int = 0
    live_min_requests: int = Field(0, description="requests before the live rate is worth comparing (drift's minimum window)")
    policies: list[PolicyUse] = Field(description="stored policies that suppress it")
