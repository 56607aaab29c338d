"""What the model needs to know about the data: shapes, names, statistics and the token layout.

:class:`DataSpec` is read from a store by ``vlatrain.data.spec_from_store`` and saved (as a plain
dict) in every checkpoint, so a trained policy can be rebuilt and run without the store.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from vladata.normalization import MIN_STD, Normalization, ObservationNormalizer
from vladata.store.layout import STATE


@dataclass(frozen=True)
class DataSpec:
    """The data a policy is built for.

    ``cameras`` are short camera names (``rgb_static`` for ``observation.images.rgb_static``),
    ``image_shapes[cam]`` the stored (H, W, C). ``gripper_dims`` are the action dimensions stored
    as -1 = closed / +1 = open in ``action.norm`` (predicted as logits, trained with BCE); the
    others are the arm dimensions. ``state_dim`` counts the state dimensions the model sees
    (``state_index`` of the stored ones, or all). ``token_ids[b]`` is the token id of bin ``b`` under the
    store's tokenizer and ``bin_centers[b]`` the normalised value bin ``b`` decodes to.
    ``observation_norm`` is the observation normalisation the policy was trained with
    (:class:`vladata.normalization.ObservationNormalizer` as a dict; :meth:`observation_normalizer`
    rebuilds it): the loader applied it to every batch, a policy applies it to each live frame
    before ``state_index`` picks the dims. A mixture's spec holds the first store's; each store's
    is in ``extra["mixture"][j]["observation_norm"]``.
    """

    cameras: tuple[str, ...]
    image_shapes: dict[str, tuple[int, int, int]]
    state_dim: int
    action_dim: int
    action_names: tuple[str, ...]
    gripper_dims: tuple[int, ...]
    language_dim: int                  # width of language.embedding (0: the store has none)
    history: int
    chunk: int
    token_ids: tuple[int, ...] = ()
    bin_centers: tuple[float, ...] = ()
    state_index: tuple[int, ...] = ()  # stored state dims fed to the model (empty: all of them)
    extra: dict = field(default_factory=dict)  # JSON-able facts (source, tokenizer dict, ...)
    observation_norm: dict = field(default_factory=dict)  # ObservationNormalizer.to_dict()

    def observation_normalizer(self) -> ObservationNormalizer:
        """The normaliser of the policy's low-dim observations (empty if it has none)."""
        if not self.observation_norm:
            return ObservationNormalizer()
        return ObservationNormalizer.from_dict(self.observation_norm)

    @property
    def arm_dims(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.action_dim) if i not in self.gripper_dims)

    @property
    def n_bins(self) -> int:
        return len(self.token_ids)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["image_shapes"] = {k: list(v) for k, v in self.image_shapes.items()}
        for k in ("cameras", "action_names", "gripper_dims",
                  "token_ids", "bin_centers", "state_index"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DataSpec":
        d = dict(d)
        if "state_mean" in d:  # written when states were normalised on the device
            d["observation_norm"] = _legacy_state_norm(d.pop("state_mean"), d.pop("state_std"),
                                                       d.get("state_index") or ())
        d["image_shapes"] = {k: tuple(int(x) for x in v) for k, v in d["image_shapes"].items()}
        for k in ("cameras", "action_names", "gripper_dims",
                  "token_ids", "bin_centers", "state_index"):
            d[k] = tuple(d.get(k, ()))
        return cls(**d)


def _legacy_state_norm(mean, std, index) -> dict:
    """The observation normalisation of a spec that kept ``state_mean``/``state_std`` (the
    mean/std of the state dims the model saw, applied on the device, a std <= 1e-6 taken as 1)."""
    if not mean:
        return {}
    if index:
        raise ValueError("this checkpoint's data spec normalised only the data.state_dims of the "
                         "state (state_index), a format older than observation_norm that cannot "
                         "be converted; retrain it")
    std = [s if s > MIN_STD else 1.0 for s in std]
    norm = ObservationNormalizer({STATE: (Normalization(mode="meanstd"),
                                          {"mean": tuple(mean), "std": tuple(std)})})
    return norm.to_dict()
