"""The delta-aware pull: plan, execute, fall back, report.

:func:`pull_delta` updates an OCI image layout to a target image by
downloading only a delta from a Doras server when it can, and a verified full
pull when it cannot (or when no server is given). The layout is never left
invalid and the old image stays until the new one is committed
(``index.json`` is written last, in the install transaction: the layout's lock
is held for it alone, never while the Doras server builds or a blob downloads). Every decision is
reported in :class:`PullResult`, as a sentence (``reason``) and as a code
(``reason_code``, a :class:`~doras_oras.plan.ReasonCode`).

The steps (DESIGN.md §1), one forward walk
``pull → (registry fetch | edge conversation) → codecs → layout``:

1. fetch the target manifest in one ``GET``, conditional on the digest the layout's
   image of it stands for (``If-None-Match``: a ``304`` without a body means up to date;
   :meth:`RegistryClient.fetch_if_changed`); an image of the layout that stands for the
   digest received means up to date too;
   with ``verify``: that digest's signature must verify now, before anything else
   is asked for (docs/trust.md); every later step works on that digest, the fallbacks too;
2. the manifest received is verified and schema-checked (its own digest is the one
   verified and installed); check the limits (``max_size``, download budget) before downloading;
3. find the base: the newest image of the same repository in the layout, or
   the one ``from_ref`` names; none → full pull;
4. check the stored base layer (a missing base means a full pull);
5. choose the algorithms that can be applied *and verified* (:mod:`.plan`);
6. the Doras conversation (:meth:`EdgeClient.fetch_delta`): ask (polling with
   backoff, or once with ``wait=False``), check the answer and the delta manifest;
7. download the delta blob into the layout's ``ingest/`` (verified, resumable);
8. apply it to the base layer into a blob writer of the layout (verified), store;
9. with ``output_dir``, write the image's files there (all or nothing), then commit
   ``index.json``: a failure to write the files leaves the layout as it was, so the
   next run does the update again (and says so).

The base may be an entry that another tool wrote (``oras copy --to-oci-layout``,
``skopeo copy ... oci:DIR:TAG``): it is recognised by its ``ref.name``
(:meth:`~doras_oras.layout.ImageEntry.belongs_to`).

Before the server is asked (and when none is given), a delta already stored in
the registry for the pair is looked for (:func:`~doras_oras.stored_deltas.find_stored_delta`,
``registry_deltas``); one found is used as a server-named one is.

Anything that makes the delta unusable (server down, 4xx/5xx, timeout,
corrupt or unverifiable delta, a delta of a kind that was not asked for)
falls back to a verified full pull, and the result says why; with
``fallback="never"`` (and with ``wait=False``) a full download that would
replace a delta is refused instead (:class:`~doras_oras.errors.FallbackRefusedError`).
"""

from ..full import Progress
from ..plan import ReasonCode
from .options import Fallback, PullKeywords, PullOptions, Waiting, check_base_ref
from .result import PullResult, Status
from .run import find_base, pull_delta

__all__ = [
    "Fallback",
    "Progress",
    "PullKeywords",
    "PullOptions",
    "PullResult",
    "ReasonCode",
    "Status",
    "Waiting",
    "check_base_ref",
    "find_base",
    "pull_delta",
]
