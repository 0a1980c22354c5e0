"""``maskkit synth``: a masked-face training set as WebDataset shards -- exact, resumable, scalable.

Pipeline per identity (one work unit, so the ratio can be exact within each identity)::

    phase 1  every file: decode -> detect (or landmarks in the whole crop with --aligned)
             -> select one face -> fit the ArcFace transform      => accepted faces (n)
    phase 2  seeded by (seed, identity): a permutation of the n faces and a balanced list of
             m = round_half_up(ratio * n) styles; walk the permutation rendering each candidate
             (on the *source* image, at source resolution) until m renders succeeded. A face
             whose landmarks cannot take a mask (``CannotFit``) stays unmasked, is logged in
             ``mask_skips.jsonl``, and the next candidate takes its style, so the ratio stays
             exact whenever the identity has m faces that can be masked.
    phase 3  in file order: align the plain and/or the masked source crop with the same
             transform, warp the mask coverage alike, encode JPEG / PNG / JSON.

Exactness and determinism:

* Every random choice is drawn from a generator seeded by ``(seed, identity)`` (which faces,
  which styles) or ``(seed, sample key)`` (the render), never by worker or arrival order.
* Identities are processed in class order and their samples are written in one fixed global
  order (class, file, face, plain-then-masked), and shard ``k`` holds samples
  ``[k*S, (k+1)*S)`` of that order. So the shards are byte-identical for any ``--jobs`` and
  any backend.
* Styles: within an identity every style gets ``m // K`` masks and the ``m % K`` left over go
  to the next distinct styles in class order, from a running offset that the journal keeps
  (identity 1's leftovers start where identity 0's stopped). Over the whole set the styles'
  counts differ by at most 1 (when no render fails), whatever the number of identities: on
  lfw-johns' 30 masked faces, 6 of each. A worker does not know the offset (it depends on the
  identities before it), so it renders the ``m % K`` leftover faces for every offset and the
  driver keeps the one that applies: at most ``(K - 1) * (m % K)`` extra renders per identity.

Resume: each shard is written as ``*.tar.tmp`` and renamed when complete; a journal
(``.synth-journal.jsonl``) records every finished shard (name, samples, bytes, sha256) and
every consumed identity (its cumulative sample count, statistics and failures). A restarted run
with the same options keeps the journalled shards whose sha256 still matches, re-runs from the
identity holding the first sample not yet in a complete shard and skips that identity's samples
already written. ``failures.jsonl`` and ``manifest.json`` (last) are written at the end, then the
journal is removed.

Scale: work is chunked by identity and sent through ``joblib.Parallel(return_as="generator")``
with bounded pre-dispatch, so at most ~2 identities per worker are in flight and results are
written in order as they arrive (memory is bounded by the largest identity, not the dataset).
Models load once per worker process. ``backend="dask"`` runs the same units on a
``distributed`` cluster (``address`` of its scheduler; a local cluster when omitted) through
joblib's Dask backend; ``backend="ray"`` through Ray's joblib backend.

Example:
    >>> res = run_synth(SynthConfig(src="vggface2/train", out="shards/", ratio=0.5, jobs=8))  # doctest: +SKIP
    >>> res.manifest["num_masked"]                                                            # doctest: +SKIP
"""
from maskkit.pipeline.synth.config import (
           ALGORITHM_VERSION,
           ALL_STYLES,
           JOURNAL,
           STAGES,
           SynthConfig,
           SynthError,
)
from maskkit.pipeline.synth.plan import (
           Chunk,
           ChunkResult,
           InputItem,
           list_inputs,
           plan_chunks,
)
from maskkit.pipeline.synth.run import SynthResult, run_synth
from maskkit.pipeline.synth.seeding import (
           balanced_styles,
           leftover_styles,
           next_style_offset,
           render_seed,
           sample_key,
)
from maskkit.pipeline.synth.summary import summary_rows
from maskkit.pipeline.synth.worker import process_chunk

__all__ = ["SynthConfig", "SynthResult", "InputItem", "Chunk", "ChunkResult", "list_inputs", "plan_chunks",
           "process_chunk", "run_synth", "sample_key", "render_seed", "balanced_styles", "leftover_styles",
           "next_style_offset", "summary_rows", "ALL_STYLES",
           "JOURNAL", "STAGES", "SynthError", "ALGORITHM_VERSION"]
