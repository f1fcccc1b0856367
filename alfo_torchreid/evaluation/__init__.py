"""Judging a model: Rank-k/mAP and the attribute metrics (:mod:`.metrics`),
attribute re-ranking (:mod:`.attribute_match`), ranked-list pictures
(:mod:`.rank_grid`), comparison tables and plots (:mod:`.report`) and the
paper's published figures (:mod:`.paper`)."""
