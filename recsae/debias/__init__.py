"""De-biasing recommendations by suppressing SAE latents or the SAE baseline (GitHub issue 5, part 2).

NumPy only (``plot_tradeoff`` imports matplotlib lazily). Everything goes through the serving
kernel (``recsae.kernel``) so a saved policy does in the service exactly what was measured here.

Modules, in the order an experiment uses them (this package re-exports their names):

1. **Bias measures** (``measures``) on top-k lists (:func:`popularity_share`, :func:`mean_popularity`,
   :func:`gender_gap`, :func:`gender_auc`) and their experiment wrappers
   :class:`PopularityBias` / :class:`GenderBias` (a per-user list statistic ``b_u`` and user
   weights ``w_u``; the bias is ``sum_u w_u b_u``).
2. **Inputs** (``inputs``: :func:`load_data`, :func:`data_from_engine`): a bundle's engine, the dataset's
   leave-one-out split, dev-stage inputs (pick latents) and test-stage inputs (report).
3. **Candidate latents** (``selection``: :func:`latent_evidence`, :func:`greedy_selection`), chosen from
   dev-stage data only: the test items never influence which latents are picked; and the
   evidence that the SAE's *baseline* ``b_dec`` is the popularity concept (:func:`baseline_evidence`).
4. **Sweep** (``sweeps``: :func:`run_experiment`; its settings and the CLI flags: ``config``): number of suppressed latents x strength, against random
   latents; baseline strength (``x - beta * b_dec``), against random directions of the same norm;
   both combined; and a post-hoc re-ranking baseline at matched accuracy.
5. **Policies** (``policy``: :func:`choose_policy`, :func:`save_policy`): the chosen suppression as
   the file the service takes as is (``recsae.policy.PolicyFile``, steered by ``recsae.policy.steering``).
6. **Report** (``report``, ``plots``): tables, markdown and the trade-off plot.

Why a baseline method: a TopK SAE absorbs what every input shares into its decoder bias (it starts
at the data mean) and spends no sparse latent on it. In a recommender that is chiefly popularity,
so suppressing latents cannot remove popularity, while suppressing the baseline can.
"""

from recsae.debias.inputs import (  # noqa: F401
    DEFAULT_RERANK_GRID,
    DebiasData,
    StageInputs,
    _gain,
    _list_stats,
    _summarise,
    data_from_engine,
    evaluate_suppression,
    gender_of,
    load_data,
    matched_bias,
    random_directions,
    rerank_curve,
    stage_inputs,
    steered_lists,
    with_kernel,
)
from recsae.debias.measures import (  # noqa: F401
    BIASES,
    COMPARATOR,
    DEFAULT_BASELINE_STRENGTHS,
    DEFAULT_COUNTS,
    DEFAULT_STRENGTHS,
    HEAD_FRACTION,
    LATENT_METHODS,
    METHODS,
    POLICY_METHODS,
    RESERVED_STRENGTHS,
    TOP_K,
    BiasMeasure,
    GenderBias,
    PopularityBias,
    StereotypedGenres,
    auc,
    average_ranks,
    gender_auc,
    gender_gap,
    genre_matrix,
    head_items,
    head_share_per_user,
    mean_popularity,
    popularity_share,
    spearman,
    stereotype_per_user,
    stereotyped_genres,
)
from recsae.debias.plots import (  # noqa: F401
    plot_tradeoff,
)
from recsae.debias.policy import (  # noqa: F401
    MAX_DESCRIPTION,
    POLICY_KEYS,
    POLICY_NAME,
    POLICY_REQUIRED,
    budget_edge_warning,
    check_policy_dir,
    check_targets,
    choose_policy,
    load_policy,
    pick_point,
    policy_document,
    policy_json,
    save_policy,
)
from recsae.debias.report import (  # noqa: F401
    _json_default,
    _point_text,
    baseline_markdown,
    evidence_markdown,
    measure_markdown,
    render_section,
    rerank_table,
    sweep_table,
    targets_markdown,
    write_outputs,
)
from recsae.debias.selection import (  # noqa: F401
    baseline_evidence,
    candidate_pool,
    firing,
    greedy_selection,
    latent_evidence,
)
from recsae.debias.sweeps import (  # noqa: F401
    add_crossfit_choices,
    add_ndcg_loss_intervals,
    evidence_table,
    run_experiment,
)
