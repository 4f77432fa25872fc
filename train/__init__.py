"""Stage two: FAST-VQA spatial branch, semantic MLP, regression head, training and scoring."""
