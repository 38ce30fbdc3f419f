"""From a trained run to masks: kNN retrieval, CAMs, pseudo labels, stage 2, CRF and scores."""
