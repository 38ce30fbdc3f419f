"""From a trained run to masks: kNN retrieval, pseudo labels, stage 2, CRF and scores."""
