"""The MD2PR distillation trainer: iterations of mine -> annotate -> filter -> train -> evaluate -> save.

Each iteration ``t`` (1-based), with ``S_0`` the base student:

1. **mine** (:func:`training.mining.mine`): hard negatives for every ``<split>:fit`` query from
   the dense index of ``S_{t-1}`` (and BM25: in the first iteration, or in every one with
   ``mine_bm25="always"``), and for every unlabelled query (``unlabelled_queries``: the unjudged
   topics of a TREC DL dataset) candidates alone, whose best by the teacher becomes its positive
   after annotation (:func:`training.false_negatives.with_pseudo_positive`);
2. **annotate** (:func:`training.annotate.annotate_file`): the teacher's score of every
   candidate (:func:`retrieval.cross_encoder.teacher_scores`) and, when word-level KD is on,
   its query->passage attention maps for the positives and the first negatives;
3. **filter** (:func:`training.false_negatives.filter_false_negatives`): this iteration's
   threshold, the suspected false negatives dropped (or counted as positives);
4. **train** ``S_t`` from ``S_{t-1}``: one loop over micro-batches of ``queries_per_batch``
   queries, each with one positive and ``negatives`` hard negatives (the other queries'
   passages are in-batch negatives), loss :class:`training.losses.MD2PRLoss`, gradient
   accumulation, AdamW with linear warm-up and decay, a checkpoint every ``save_every`` steps;
5. **evaluate** ``S_t`` on ``<split>:dev`` (the corpus encoded into a Flat index, which is also
   the next iteration's mining index) and save it.

Runs that differ only after iteration 1's annotation (the ablations: no word-level KD, no
sentence-level KD, static threshold, no filter) mine and annotate the same iteration 1, and
annotation is the slow phase on CPUs. With ``first_iteration_from`` (another run directory)
iteration 1's **mine** and **annotate** phases take that run's files instead of computing them:
``indexes/s0`` (unless ``base_index``), ``iter-01/mined.jsonl``, ``iter-01/annotated.jsonl`` and,
when this run uses word-level KD, ``iter-01/attention/`` are hard-linked (copied where links
fail), each put in place atomically. The source must have finished annotating its iteration 1
and agree on every setting in :data:`FIRST_ITERATION_FIELDS` (and on the teacher's and the base
student's fingerprints); this is checked before anything is written and again at each phase.
The base student's dev metrics, filter, training, evaluation and later iterations are computed
by this run.

The distilled student is ``<output>/model``: a :class:`retrieval.encoder.DualEncoder` directory
(``save_pretrained``: weights, tokenizer, ``encoder_config.json`` with its fingerprint, the
sentence-transformers files) that ``md2pr-build-index`` and the service load unchanged.

Output directory::

    config.json             the full DistillConfig (and the teacher's identity)
    state.json              where the run is: iteration, phase, per-iteration results (with
                            first_iteration_from: "first_iteration_from" and iteration 1's
                            "shared_from", the source run; its "mine" summary is the source's)
    log.jsonl               one line per optimizer step: iteration, step, loss and each term, lr
    iterations.jsonl        one line per finished iteration: mining, filter, training, dev metrics
    indexes/s<t>/           the Flat index of student S_t (s0: the base student)
    iter-<t>/mined.jsonl, annotated.jsonl, attention/, filter.json
                            (iteration 1's first three, and indexes/s0, are links to the
                            first_iteration_from run's files when it is set; the annotated
                            header then names that run's attention/, this run reads its own)
    iter-<t>/checkpoint/    while training: the student + trainer_state.pt + distill_config.json
    iter-<t>/student/       S_t
    model/                  the selected student (best dev nDCG@10, or the last)
    report.json             summary

``resume=True`` continues a killed run from ``state.json``: a finished phase is not redone,
annotation continues from its partial file, and training continues at the optimizer step of
its checkpoint (the batches of an epoch are a pure function of the seed, the iteration and the
epoch, and the RNG state is restored, so a resumed run computes what the uninterrupted one would).

Package layout: :mod:`.config` (the settings and their validation), :mod:`.batches` (batch
planning: training views, epoch plans, targets, word-level inputs), :mod:`.sharing`
(first-iteration reuse: hard-link sharing and its refusals), :mod:`.datasets` (hidden
positives, unlabelled queries, students' indexes and dev measures), :mod:`.train_phase` and
:mod:`.trainer` (the phases and the run); checkpoint save/resume is :mod:`training.checkpoint`,
shared with the teacher's loop.
"""

from .batches import BatchTargets, Group, batch_targets, plan_epoch, training_queries, word_inputs
from .config import (
    CHECKPOINT_CONFIG_FILE,
    CONFIG_FILE,
    DEV_MEASURES,
    FIRST_ITERATION_ATTENTION_FIELDS,
    FIRST_ITERATION_FIELDS,
    FIRST_ITERATION_SEED_FIELDS,
    PHASES,
    STATE_FILE,
    TRAINER_STATE_FILE,
    DistillConfig,
)
from .datasets import build_student_index, evaluate_dev, hidden_positives, unlabelled_dataset, without
from .sharing import FirstIterationSource, share_dir, share_file
from .trainer import Distiller, distill, iter_log

__all__ = [
    "CHECKPOINT_CONFIG_FILE", "CONFIG_FILE", "DEV_MEASURES", "FIRST_ITERATION_ATTENTION_FIELDS", "FIRST_ITERATION_FIELDS",
    "FIRST_ITERATION_SEED_FIELDS", "PHASES", "STATE_FILE", "TRAINER_STATE_FILE", "BatchTargets", "DistillConfig",
    "Distiller", "FirstIterationSource", "Group", "batch_targets", "build_student_index", "distill", "evaluate_dev",
    "hidden_positives", "iter_log", "plan_epoch", "share_dir", "share_file", "training_queries", "unlabelled_dataset",
    "without", "word_inputs",
]
