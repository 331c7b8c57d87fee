"""The self-rewarding KFP pipeline: definition, compile entry and local run (``make pipeline``, ``make demo``)."""
